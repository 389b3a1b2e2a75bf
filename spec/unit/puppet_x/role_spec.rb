# frozen_string_literal: true

require 'tmpdir'
require_relative '../../support/status_files'
require_relative '../../../lib/puppet_x/pe_failover/role'

RSpec.describe PuppetX::PeFailover::Role do
  files = PeFailoverSpec::StatusFiles
  let(:dir) { Dir.mktmpdir('pe_failover-role') }
  let(:facts_file) { File.join(dir, 'facts.d', 'pe_failover.yaml') }

  after { FileUtils.rm_rf(dir) }

  def facts(text)
    FileUtils.mkdir_p(File.dirname(facts_file))
    File.write(facts_file, text)
    File.chmod(0o644, facts_file)
  end

  it 'promotes a passive: role active in the configuration and the facts file, owner and mode kept' do
    config = files.config(dir, role: 'passive', certname: 'b.example.com')
    File.chmod(0o640, config)
    facts("# Managed by Puppet (pe_failover): this host's pe_failover role.\npe_failover_mode: \"passive\"\n")
    report = described_class.promote(config: config, facts_file: facts_file)
    expect(report).to include('ok' => true, 'host' => 'b.example.com', 'role_before' => 'passive', 'role' => 'active',
                              'changed' => [config, facts_file], 'stopped_replicas' => [])
    expect(report['lines'].join("\n")).to include('refuses transactions from its old primary (fenced)', 'declares pe_failover::active on b.example.com')
    expect(JSON.parse(File.read(config))['role']).to eq('active')
    expect(File.stat(config).mode & 0o777).to eq(0o640)
    expect(File.read(facts_file)).to eq("# Managed by Puppet (pe_failover): this host's pe_failover role.\npe_failover_mode: \"active\"\n")
    expect(Dir.children(File.dirname(config))).to eq(['config.json']) # no temporary file left

    again = described_class.promote(config: config, facts_file: facts_file)
    expect(again).to include('changed' => [], 'role_before' => 'active')
    expect(again['lines'].first).to eq('b.example.com is already active; nothing changed')
  end

  it 'demotes an active: role passive, its replicas dropped so it ships nothing, no passive_master fact' do
    config = files.config(dir, role: 'active', certname: 'a.example.com', replicas: ['b.example.com', 'c.example.com'])
    facts("---\npe_failover_mode: \"active\"\npe_failover_passive_master: \"b.example.com\"\nother: 1\n")
    report = described_class.demote(config: config, facts_file: facts_file)
    expect(report).to include('role_before' => 'active', 'role' => 'passive', 'stopped_replicas' => ['b.example.com', 'c.example.com'])
    expect(report['lines'].join("\n")).to include('ships nothing any more (stopped: b.example.com, c.example.com)',
                                                  'declares pe_failover::passive on a.example.com')
    expect(JSON.parse(File.read(config))).to include('role' => 'passive', 'replicas' => [])
    expect(File.read(facts_file)).to eq("---\npe_failover_mode: \"passive\"\nother: 1\n")
  end

  it 'writes a facts file when there is none' do
    config = files.config(dir, role: 'active', certname: 'a.example.com')
    FileUtils.mkdir_p(File.dirname(facts_file))
    described_class.demote(config: config, facts_file: facts_file)
    expect(File.read(facts_file)).to eq("---\npe_failover_mode: \"passive\"\n")
    expect(File.stat(facts_file).mode & 0o777).to eq(0o644)
  end

  it 'changes nothing when the configuration cannot be read' do
    FileUtils.mkdir_p(File.dirname(facts_file))
    expect { described_class.promote(config: File.join(dir, 'none.json'), facts_file: facts_file) }
      .to raise_error(PuppetX::PeFailover::InvalidInputError, %r{none\.json: no such configuration file})
    expect(File).not_to exist(facts_file)
  end
end
