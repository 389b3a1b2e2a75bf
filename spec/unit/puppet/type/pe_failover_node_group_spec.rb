# frozen_string_literal: true

require 'spec_helper'
require 'open3'
require 'rbconfig'

RSpec.describe Puppet::Type.type(:pe_failover_node_group) do
  let(:rule) { ['and', ['=', ['fact', 'pe_failover_mode'], 'active']] }

  def group(**attributes)
    described_class.new(name: 'pe_failover-active', **attributes)
  end

  it 'has the documented attributes, with name as namevar' do
    expect(described_class.key_attributes).to eq([:name])
    expect(described_class.validproperties).to include(:ensure, :parent, :environment, :rule, :classes, :variables, :description)
    expect(described_class.parameters).to include(:name, :server, :cert, :key, :cacert, :crl, :connect_timeout, :timeout, :retry_for)
    described_class.allattrs.each do |attr|
      expect(described_class.attrclass(attr).doc.to_s.strip).not_to be_empty, "#{attr} has no documentation"
    end
  end

  describe 'defaults (a PE primary managing its own classifier)' do
    before(:each) do
      allow(Facter).to receive(:value).and_call_original
      allow(Facter).to receive(:value).with('networking.fqdn').and_return('a.example.com')
    end

    it 'is present, under All Nodes, in production' do
      g = group
      expect(g[:ensure]).to eq(:present)
      expect(g[:parent]).to eq('All Nodes')
      expect(g[:environment]).to eq('production')
      expect(g[:rule]).to be_nil
      expect(g[:classes]).to be_nil
    end

    it 'talks to https://<fqdn>:4433 with the host certificate from the ssldir' do
      g = group
      ssldir = Puppet[:ssldir]
      certname = Puppet[:certname]
      expect(g[:server]).to eq('https://a.example.com:4433')
      expect(g[:cert]).to eq(File.join(ssldir, 'certs', "#{certname}.pem"))
      expect(g[:key]).to eq(File.join(ssldir, 'private_keys', "#{certname}.pem"))
      expect(g[:cacert]).to eq(File.join(ssldir, 'certs', 'ca.pem'))
      expect([g[:connect_timeout], g[:timeout], g[:retry_for]]).to eq([10.0, 120.0, 120.0])
    end
  end

  describe 'validation' do
    it 'accepts the three pe_failover groups' do
      expect { group(parent: 'pe_failover', rule: rule, classes: { 'pe_failover::active' => { 'x' => 1 } }, variables: { 'v' => [1] }) }
        .not_to raise_error
    end

    it 'refuses an empty name or parent' do
      expect { described_class.new(name: ' ') }.to raise_error(Puppet::ResourceError, %r{non-empty})
      expect { group(parent: '') }.to raise_error(Puppet::ResourceError, %r{parent must be})
    end

    it 'refuses a rule outside the grammar' do
      expect { group(rule: ['is', 'name', 'x']) }.to raise_error(Puppet::ResourceError, %r{rule must start with one of and, or, not})
      expect { group(rule: ['and', { 'x' => 1 }]) }.to raise_error(Puppet::ResourceError, %r{strings, numbers and arrays})
    end

    it 'refuses classes that are not class => parameters, and variables that are not a hash' do
      expect { group(classes: ['a']) }.to raise_error(Puppet::ResourceError, %r{classes must be a Hash})
      expect { group(classes: { 'a' => 'b' }) }.to raise_error(Puppet::ResourceError, %r{classes must be a Hash})
      expect { group(variables: 'x') }.to raise_error(Puppet::ResourceError, %r{variables must be a Hash})
      expect { group(description: 5) }.to raise_error(Puppet::ResourceError, %r{description must be a string})
    end

    it 'refuses a plain-http server, relative certificate paths and bad numbers' do
      expect { group(server: 'http://a:4433') }.to raise_error(Puppet::ResourceError, %r{https://})
      expect { group(cert: 'certs/a.pem') }.to raise_error(Puppet::ResourceError, %r{cert must be an absolute path})
      expect { group(timeout: 'soon') }.to raise_error(Puppet::ResourceError, %r{invalid value for Float})
    end

    it 'gives a class without parameters an empty hash' do
      expect(group(classes: { 'pe_repo' => nil })[:classes]).to eq('pe_repo' => {})
    end
  end

  describe 'comparison' do
    it 'treats an absent rule and [] alike, and compares whole rules' do
      prop = group(rule: []).property(:rule)
      expect(prop.insync?([])).to be(true)
      expect(prop.insync?(:absent)).to be(true)
      expect(prop.insync?(rule)).to be(false)
      prop = group(rule: rule).property(:rule)
      expect(prop.insync?(rule)).to be(true)
      expect(prop.insync?(['and', ['=', ['fact', 'pe_failover_mode'], 'passive']])).to be(false)
    end

    it 'treats an absent description and an empty one alike' do
      expect(group(description: '').property(:description).insync?('')).to be(true)
      expect(group(description: 'x').property(:description).insync?('')).to be(false)
    end

    it 'compares classes as whole hashes' do
      prop = group(classes: { 'a' => { 'p' => 1 } }).property(:classes)
      expect(prop.insync?({ 'a' => { 'p' => 1 } })).to be(true)
      expect(prop.insync?({ 'a' => { 'p' => 1 }, 'b' => {} })).to be(false)
    end
  end

  it 'autorequires its parent group' do
    catalog = Puppet::Resource::Catalog.new
    parent = described_class.new(name: 'pe_failover')
    child = group(parent: 'pe_failover')
    catalog.add_resource(parent, child)
    edges = child.autorequire.map { |e| [e.source.ref, e.target.ref] }
    expect(edges).to eq([['Pe_failover_node_group[pe_failover]', 'Pe_failover_node_group[pe_failover-active]']])
  end

  it 'loads no native code when the type is loaded (Puppet Server compiles under JRuby)' do
    lib = File.expand_path('../../../../lib', __dir__)
    code = <<~RUBY
      require 'puppet'
      require 'puppet/type/pe_failover_node_group'
      Puppet::Type.type(:pe_failover_node_group)
      puts defined?(PuppetX::PeFailover::Native).inspect
      puts $LOADED_FEATURES.grep(/pe_failover_native/).inspect
    RUBY
    out, status = Open3.capture2e(RbConfig.ruby, '-I', lib, '-e', code)
    expect(status).to be_success, out
    expect(out.lines.map(&:strip)).to eq(['nil', '[]'])
  end
end
