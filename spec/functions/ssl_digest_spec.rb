# frozen_string_literal: true

require 'spec_helper'
require 'tmpdir'
require_relative '../support/test_ca'

RSpec.describe 'pe_failover::ssl_digest' do
  around(:each) do |ex|
    Dir.mktmpdir('ssl_digest') do |tmp|
      @tmp = tmp
      ex.run
    end
  end

  let(:ssldir) do
    dir = File.join(@tmp, 'ssl')
    ca = PeFailoverSpec::TestCA.create(dir, key_bits: 1024)
    ca.sign('agent1.example.com')
    ca.sign('agent2.example.com')
    ca.host_files('a.example.com', dir)
    File.symlink('ca/ca_crt.pem', File.join(dir, 'ca-link.pem'))
    dir
  end

  it 'returns the root digest of the tree, as computed independently' do
    expect(subject).to run.with_params(ssldir).and_return(PeFailoverSpec::ManifestOracle.digest(ssldir))
  end

  it 'leaves out excluded paths' do
    expected = PeFailoverSpec::ManifestOracle.digest(ssldir) { |rel| rel.start_with?('private_keys') || rel.end_with?('.tmp') }
    expect(subject).to run.with_params(ssldir, ['private_keys', '*.tmp']).and_return(expected)
    expect(expected).not_to eq(PeFailoverSpec::ManifestOracle.digest(ssldir))
  end

  it 'changes when a certificate is revoked (CRL rewritten, signed/ untouched)' do
    before = PeFailoverSpec::ManifestOracle.digest(ssldir)
    PeFailoverSpec::TestCA.open(ssldir).revoke('agent1.example.com')
    after = PeFailoverSpec::ManifestOracle.digest(ssldir)
    expect(after).not_to eq(before)
    expect(subject).to run.with_params(ssldir).and_return(after)
  end

  it 'fails with the path when the directory does not exist' do
    missing = File.join(@tmp, 'missing')
    expect(subject).to run.with_params(missing).and_raise_error(Puppet::Error, %r{pe_failover::ssl_digest\(#{missing}\): cannot scan #{missing}})
  end

  it 'rejects a relative path and a bad exclude pattern' do
    expect(subject).to run.with_params('ssl').and_raise_error(ArgumentError, %r{expects a Stdlib::Absolutepath})
    expect(subject).to run.with_params(ssldir, ['signed/[a']).and_raise_error(Puppet::Error, %r{invalid exclude pattern "signed/\[a"})
  end
end
