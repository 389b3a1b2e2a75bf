# frozen_string_literal: true

require 'fileutils'
require 'open3'
require 'rbconfig'
require 'tmpdir'
require_relative '../support/test_ca'

# PeFailoverSpec::TestCA: Puppet cadir layout and formats, checked with the
# openssl command line where it matters (CRLs).
RSpec.describe PeFailoverSpec::TestCA do
  # RSA key generation dominates; make one CA and give each example a copy.
  before(:all) do
    @template = Dir.mktmpdir('test-ca-template')
    described_class.create(@template)
  end
  after(:all) { FileUtils.rm_rf(@template) }

  around do |example|
    Dir.mktmpdir('test-ca-spec') do |dir|
      @dir = dir
      example.run
    end
  end

  let(:ca) do
    FileUtils.cp_r(File.join(@template, 'ca'), @dir)
    described_class.open(@dir)
  end
  let(:cadir) { File.join(@dir, 'ca') }
  let(:puppet_time) { /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dUTC/ }

  def openssl_verify(cert_path, crl_path = ca.crl_path, ca_path = ca.ca_cert_path)
    out, status = Open3.capture2e('openssl', 'verify', '-crl_check', '-CAfile', ca_path, '-CRLfile', crl_path, cert_path)
    [status.success?, out]
  end

  def mode(path)
    File.stat(path).mode & 0o777
  end

  it 'creates the Puppet cadir layout' do
    ca
    expect(Dir.children(cadir)).to match_array(%w[ca_crt.pem ca_key.pem ca_pub.pem ca_crl.pem infra_crl.pem serial
                                                  inventory.txt infra_inventory.txt infra_serials signed])
    expect(Dir.children(File.join(cadir, 'signed'))).to eq([])
    expect(File.read(File.join(cadir, 'serial'))).to eq("0002\n")
    expect(File.read(File.join(cadir, 'inventory.txt'))).to match(%r{\A0x0001 #{puppet_time} #{puppet_time} /CN=Puppet CA: test\n\z})
    expect(File.read(File.join(cadir, 'infra_inventory.txt'))).to eq('')
    expect(File.read(File.join(cadir, 'infra_serials'))).to eq('')
    expect(mode(File.join(cadir, 'ca_key.pem'))).to eq(0o640)
  end

  it 'makes a self-signed CA certificate whose public key is ca_pub.pem' do
    cert = OpenSSL::X509::Certificate.new(File.read(ca.ca_cert_path))
    expect(cert.subject.to_s).to eq('/CN=Puppet CA: test')
    expect(cert.verify(cert.public_key)).to be(true)
    extensions = cert.extensions.to_h { |e| [e.oid, e.value] }
    expect(extensions['basicConstraints']).to eq('CA:TRUE')
    expect(extensions['keyUsage']).to eq('Certificate Sign, CRL Sign')
    expect(File.read(File.join(cadir, 'ca_pub.pem'))).to eq(cert.public_key.to_pem)
    expect(ca.key.n.num_bits).to eq(2048)
  end

  it 'honours ca_name and key_bits' do
    small = described_class.create(File.join(@dir, 'small'), ca_name: 'Puppet CA: small', key_bits: 1024)
    expect(small.key.n.num_bits).to eq(1024)
    expect(small.cert.subject.to_s).to eq('/CN=Puppet CA: small')
  end

  it 'starts with empty v2 CRLs (number 0) that openssl accepts' do
    crl = ca.crl
    expect(crl.version).to eq(1)
    expect(crl.revoked).to eq([])
    expect(crl.verify(ca.cert.public_key)).to be(true)
    expect(crl.extensions.find { |e| e.oid == 'crlNumber' }.value).to eq('0')
    infra = OpenSSL::X509::CRL.new(File.read(File.join(cadir, 'infra_crl.pem')))
    expect(infra.verify(ca.cert.public_key)).to be(true)
  end

  describe '#sign' do
    it 'writes signed/<name>.pem, bumps serial and appends to the inventory' do
      cert, key = ca.sign('agent1.test')
      expect(File.read(ca.signed_path('agent1.test'))).to eq(cert.to_pem)
      expect(cert.serial.to_i).to eq(2)
      expect(cert.check_private_key(key)).to be(true)
      expect(File.read(File.join(cadir, 'serial'))).to eq("0003\n")
      expect(File.readlines(File.join(cadir, 'inventory.txt')).last)
        .to match(%r{\A0x0002 #{puppet_time} #{puppet_time} /CN=agent1.test\n\z})
      expect(cert.verify(ca.cert.public_key)).to be(true)
      expect(openssl_verify(ca.signed_path('agent1.test'))).to eq([true, "#{ca.signed_path('agent1.test')}: OK\n"])
    end

    it 'names the host, localhost and 127.0.0.1 plus extra alt names, for server and client use' do
      cert, = ca.sign('nc.test', dns_alt_names: ['puppet', 'DNS:puppet.example', 'IP:10.0.0.1'])
      extensions = cert.extensions.to_h { |e| [e.oid, e.value] }
      expect(extensions['subjectAltName']).to eq('DNS:nc.test, DNS:localhost, IP Address:127.0.0.1, DNS:puppet, ' \
                                                 'DNS:puppet.example, IP Address:10.0.0.1')
      expect(extensions['extendedKeyUsage']).to eq('TLS Web Server Authentication, TLS Web Client Authentication')
      expect(extensions['basicConstraints']).to eq('CA:FALSE')
      plain, = ca.sign('plain.test', loopback: false)
      expect(plain.extensions.find { |e| e.oid == 'subjectAltName' }.value).to eq('DNS:plain.test')
    end

    it 'uses EC host keys by default and RSA on request' do
      _, key = ca.sign('ec.test')
      expect(key).to be_a(OpenSSL::PKey::EC)
      rsa_ca = described_class.create(File.join(@dir, 'rsa'), host_key: :rsa)
      _, rsa_key = rsa_ca.sign('rsa.test')
      expect(rsa_key).to be_a(OpenSSL::PKey::RSA)
    end

    it 'refuses a second certificate for the same name and bad certnames' do
      ca.sign('once.test')
      expect { ca.sign('once.test') }.to raise_error(described_class::Error, /already has a signed certificate/)
      expect { ca.sign('../evil') }.to raise_error(described_class::Error, /invalid certname/)
    end

    it 'writes serials above 0xFFFF in Puppet format' do
      ca
      File.write(File.join(cadir, 'serial'), "FFFF\n")
      cert, = ca.sign('big.test')
      expect(cert.serial.to_i).to eq(0xFFFF)
      expect(File.read(File.join(cadir, 'serial'))).to eq("10000\n")
      expect(File.readlines(File.join(cadir, 'inventory.txt')).last).to start_with('0xffff ')
    end
  end

  describe '#revoke and #clean' do
    it 'revokes into ca_crl.pem with a new CRL number; openssl -crl_check then refuses the cert' do
      ca.sign('bad.test')
      ca.sign('good.test')
      expect(ca.revoke('bad.test')).to eq(2)
      expect(ca.revoked_serials).to eq([2])
      expect(ca.crl.extensions.find { |e| e.oid == 'crlNumber' }.value).to eq('1')
      ok, out = openssl_verify(ca.signed_path('bad.test'))
      expect(ok).to be(false)
      expect(out).to include('certificate revoked')
      expect(openssl_verify(ca.signed_path('good.test')).first).to be(true)
      expect(File.exist?(ca.signed_path('bad.test'))).to be(true)
      ca.revoke('bad.test')
      expect(ca.revoked_serials).to eq([2])
    end

    it 'clean revokes and deletes signed/<name>.pem; the name can then be signed again' do
      ca.sign('gone.test')
      copy = File.join(@dir, 'gone.pem')
      FileUtils.cp(ca.signed_path('gone.test'), copy)
      expect(ca.clean('gone.test')).to eq(2)
      expect(File.exist?(ca.signed_path('gone.test'))).to be(false)
      expect(openssl_verify(copy).last).to include('certificate revoked')
      cert, = ca.sign('gone.test')
      expect(cert.serial.to_i).to eq(3)
    end

    it 'raises for a name the CA never signed' do
      expect { ca.revoke('never.test') }.to raise_error(described_class::Error, /not known/)
    end

    it 'keeps infrastructure revocations in infra_serials and infra_crl.pem too' do
      ca.sign('compiler.test', infra: true)
      ca.sign('agent.test')
      expect(File.read(File.join(cadir, 'infra_inventory.txt'))).to eq("compiler.test\n")
      ca.revoke('compiler.test')
      ca.revoke('agent.test')
      expect(File.read(File.join(cadir, 'infra_serials'))).to eq("2\n")
      infra_crl = File.join(cadir, 'infra_crl.pem')
      expect(OpenSSL::X509::CRL.new(File.read(infra_crl)).revoked.map { |r| r.serial.to_i }).to eq([2])
      expect(openssl_verify(ca.signed_path('compiler.test'), infra_crl).last).to include('certificate revoked')
      expect(openssl_verify(ca.signed_path('agent.test'), infra_crl).first).to be(true)
    end
  end

  describe 'command line' do
    let(:script) { File.expand_path('../support/test_ca.rb', __dir__) }

    def run(*args)
      Open3.capture2e(RbConfig.ruby, script, *args)
    end

    it 'creates, signs, writes host files and revokes for non-Ruby callers' do
      out, status = run('create', @dir, '--ca-name', 'Puppet CA: cli')
      expect(status.success?).to be(true), out
      expect(out).to include("ca_crt=#{File.join(cadir, 'ca_crt.pem')}")
      out, = run('host-files', @dir, 'cli.test', File.join(@dir, 'ssl'), '--dns', 'puppet')
      paths = out.lines.to_h { |l| l.chomp.split('=', 2) }
      cert = OpenSSL::X509::Certificate.new(File.read(paths['cert']))
      expect(cert.extensions.find { |e| e.oid == 'subjectAltName' }.value).to include('DNS:puppet')
      expect(run('revoke', @dir, 'cli.test').first).to eq("serial=2\n")
      verdict = openssl_verify(paths['cert'], File.join(cadir, 'ca_crl.pem'), File.join(cadir, 'ca_crt.pem'))
      expect(verdict.last).to include('certificate revoked')
      expect(run('revoke', @dir, 'nobody.test').last.exitstatus).to eq(1)
      expect(run('frobnicate').last.exitstatus).to eq(2)
    end
  end

  describe '#host_files' do
    it 'writes a host identity into an ssldir with Puppet paths and modes' do
      ssldir = File.join(@dir, 'ssl')
      files = ca.host_files('host.test', ssldir)
      expect(files.values).to all(satisfy { |f| File.file?(f) })
      expect(files[:cert]).to eq(File.join(ssldir, 'certs', 'host.test.pem'))
      expect(files[:key]).to eq(File.join(ssldir, 'private_keys', 'host.test.pem'))
      expect(mode(files[:key])).to eq(0o600)
      expect(File.read(files[:ca])).to eq(File.read(ca.ca_cert_path))
      expect(File.read(files[:crl])).to eq(File.read(ca.crl_path))
      cert = OpenSSL::X509::Certificate.new(File.read(files[:cert]))
      expect(cert.check_private_key(OpenSSL::PKey.read(File.read(files[:key])))).to be(true)
      expect(File.read(files[:public_key])).to eq(cert.public_key.to_pem)
      expect(ca.host_files('host.test', File.join(@dir, 'ssl2'))[:cert]).to satisfy { |f| File.read(f) == File.read(files[:cert]) }
    end

    it 'works on a CA reopened from disk' do
      ca.sign('first.test')
      reopened = described_class.open(@dir)
      cert, = reopened.sign('second.test')
      expect(cert.serial.to_i).to eq(3)
      files = reopened.host_files('first.test', File.join(@dir, 'ssl'))
      expect(OpenSSL::X509::Certificate.new(File.read(files[:cert])).serial.to_i).to eq(2)
    end
  end
end
