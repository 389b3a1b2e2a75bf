#!/usr/bin/env ruby
# frozen_string_literal: true

require 'openssl'
require 'fileutils'
require 'monitor'
require 'time'

module PeFailoverSpec
  # A throw-away certificate authority laid out on disk the way a Puppet CA
  # keeps its state (the `cadir`), for tests and the demo.
  #
  #   ca = PeFailoverSpec::TestCA.create('/tmp/x')        # writes /tmp/x/ca/...
  #   cert, key = ca.sign('agent1.test')                 # /tmp/x/ca/signed/agent1.test.pem
  #   ca.revoke('agent1.test')                           # rewrites ca_crl.pem
  #   ca.host_files('nc.test', '/tmp/ssl')               # a host identity in an ssldir
  #
  # Files under `<dir>/ca/` use Puppet's formats: `serial` holds the next
  # serial as upper-case hex padded to four digits, `inventory.txt` has one
  # `0x<serial> <not-before> <not-after> /CN=<name>` line per certificate
  # issued, CRLs are v2 with a CRL number. Host private keys are not part of a
  # Puppet cadir; this class keeps them in `<dir>/host_keys/` so that a CA
  # reopened with `TestCA.open` can still hand out complete identities.
  # An instance may be shared between threads (one lock serialises its writes).
  class TestCA
    # Puppet's inventory time format (always UTC, literal "UTC" suffix).
    TIME_FORMAT = '%Y-%m-%dT%H:%M:%SUTC'
    # Puppet Server stamps this comment on the certificates it issues.
    NS_COMMENT = 'Puppet Server Internal Certificate'
    DAY = 86_400
    CA_TTL = 15 * 365 * DAY
    HOST_TTL = 5 * 365 * DAY
    CRL_TTL = 5 * 365 * DAY
    # A certname may not contain path separators or whitespace.
    CERTNAME = /\A[A-Za-z0-9._-]+\z/

    # Raised for misuse (unknown certname, bad certname, missing key).
    class Error < StandardError; end

    attr_reader :dir, :cadir, :cert, :key

    # Creates a new CA under `dir` (which may exist; `dir/ca` must not hold a CA yet).
    # key_bits: RSA size of the CA key. host_key: :ec (P-256, fast) or :rsa.
    def self.create(dir, ca_name: 'Puppet CA: test', key_bits: 2048, host_key: :ec, host_key_bits: 2048)
      ca = new(dir, host_key: host_key, host_key_bits: host_key_bits)
      ca.send(:initialize_ca, ca_name, key_bits)
      ca
    end

    # Reopens a CA previously written by `create`.
    def self.open(dir, host_key: :ec, host_key_bits: 2048)
      ca = new(dir, host_key: host_key, host_key_bits: host_key_bits)
      ca.send(:load_ca)
      ca
    end

    def initialize(dir, host_key:, host_key_bits:)
      @dir = File.expand_path(dir)
      @cadir = File.join(@dir, 'ca')
      @host_key_type = host_key
      @host_key_bits = host_key_bits
      @host_keys = {}
      @lock = Monitor.new
    end

    # Path helpers for the files of the cadir.
    def path(name)
      File.join(@cadir, name)
    end

    def ca_cert_path
      path('ca_crt.pem')
    end

    def crl_path
      path('ca_crl.pem')
    end

    def signed_path(certname)
      File.join(@cadir, 'signed', "#{certname}.pem")
    end

    def host_key_path(certname)
      File.join(@dir, 'host_keys', "#{certname}.pem")
    end

    # The next serial number the CA will use.
    def next_serial
      Integer(File.read(path('serial')).strip, 16)
    end

    # The current CRL (ca_crl.pem).
    def crl
      OpenSSL::X509::CRL.new(File.read(crl_path))
    end

    # Serial numbers currently revoked by ca_crl.pem.
    def revoked_serials
      crl.revoked.map { |r| r.serial.to_i }
    end

    # The signed certificate of `certname`, or nil.
    def certificate(certname)
      file = signed_path(certname)
      File.exist?(file) ? OpenSSL::X509::Certificate.new(File.read(file)) : nil
    end

    # The private key of a host this CA signed, or nil if unknown.
    def host_key(certname)
      @host_keys[certname] ||= begin
        file = host_key_path(certname)
        File.exist?(file) ? OpenSSL::PKey.read(File.read(file)) : nil
      end
    end

    # Issues a certificate for `certname` and returns [cert, key].
    # dns_alt_names: extra names ("DNS:x", "IP:1.2.3.4" or bare DNS names).
    # loopback: also name localhost and 127.0.0.1 so TLS to 127.0.0.1 verifies.
    # infra: record the name in infra_inventory.txt (PE infrastructure node).
    # key: reuse an existing key instead of generating one.
    def sign(certname, dns_alt_names: [], loopback: true, infra: false, key: nil)
      check_certname!(certname)
      @lock.synchronize do
        raise Error, "#{certname} already has a signed certificate; clean it first" if File.exist?(signed_path(certname))

        key ||= host_key(certname) || generate_host_key
        remember_key(certname, key) # before the certificate: a signed cert always has its key
        serial = next_serial
        cert = build_host_cert(certname, key, serial, alt_names(certname, dns_alt_names, loopback))
        write_file(signed_path(certname), cert.to_pem, 0o644)
        write_file(path('serial'), format("%04X\n", serial + 1), 0o644)
        append_inventory(cert)
        File.open(path('infra_inventory.txt'), 'a') { |f| f.puts(certname) } if infra
        [cert, key]
      end
    end

    # Adds the certificate's serial to ca_crl.pem (and infra_crl.pem for
    # infrastructure nodes). Leaves signed/ alone. Returns the serial.
    def revoke(certname)
      @lock.synchronize do
        serial = serial_of(certname)
        entries = crl.revoked.map { |r| [r.serial.to_i, r.time] }
        entries << [serial, Time.now.utc] unless entries.any? { |s, _| s == serial }
        write_crl(crl_path, entries, crl_number(crl) + 1)
        revoke_infra(certname, serial) if infra?(certname)
        serial
      end
    end

    # Revokes the certificate and deletes signed/<certname>.pem.
    def clean(certname)
      @lock.synchronize do
        serial = revoke(certname)
        FileUtils.rm_f(signed_path(certname))
        serial
      end
    end

    # Writes a host identity into a Puppet ssldir, signing it first if the CA
    # has no certificate for it yet. Returns the paths written.
    def host_files(certname, ssldir, **sign_options)
      @lock.synchronize do
        cert = certificate(certname)
        key = host_key(certname)
        if cert.nil?
          cert, key = sign(certname, **sign_options)
        elsif key.nil?
          raise Error, "the private key of #{certname} is not known to this CA (#{host_key_path(certname)})"
        end
        write_host_files(certname, File.expand_path(ssldir), cert, key)
      end
    end

    # Every name in the inventory, in issue order, as [serial, certname].
    def inventory
      File.readlines(path('inventory.txt')).map do |line|
        serial, _from, _to, subject = line.split(' ', 4)
        [Integer(serial), subject.strip.sub(%r{\A/CN=}, '')]
      end
    end

    private

    def initialize_ca(ca_name, key_bits)
      raise Error, "#{ca_cert_path} already exists" if File.exist?(ca_cert_path)

      FileUtils.mkdir_p(File.join(@cadir, 'signed'))
      File.chmod(0o750, @cadir)
      @key = OpenSSL::PKey::RSA.new(key_bits)
      @cert = build_ca_cert(ca_name)
      write_ca_files
    end

    def write_ca_files
      write_file(ca_cert_path, @cert.to_pem, 0o644)
      write_file(path('ca_key.pem'), @key.to_pem, 0o640)
      write_file(path('ca_pub.pem'), @key.public_to_pem, 0o644)
      write_file(path('serial'), format("%04X\n", 2), 0o644)
      write_file(path('inventory.txt'), '', 0o644)
      append_inventory(@cert)
      write_file(path('infra_inventory.txt'), '', 0o644)
      write_file(path('infra_serials'), '', 0o644)
      write_crl(crl_path, [], 0)
      write_crl(path('infra_crl.pem'), [], 0)
    end

    def load_ca
      raise Error, "no CA at #{@cadir}" unless File.exist?(ca_cert_path)

      @cert = OpenSSL::X509::Certificate.new(File.read(ca_cert_path))
      @key = OpenSSL::PKey.read(File.read(path('ca_key.pem')))
    end

    def check_certname!(certname)
      raise Error, "invalid certname #{certname.inspect}" unless certname.is_a?(String) && certname.match?(CERTNAME)
    end

    def generate_host_key
      if @host_key_type == :rsa
        OpenSSL::PKey::RSA.new(@host_key_bits)
      else
        OpenSSL::PKey::EC.generate('prime256v1')
      end
    end

    def remember_key(certname, key)
      @host_keys[certname] = key
      write_file(host_key_path(certname), key.private_to_pem, 0o600)
    end

    def alt_names(certname, extra, loopback)
      names = ["DNS:#{certname}"]
      names += %w[DNS:localhost IP:127.0.0.1] if loopback
      extra.each do |name|
        names << (name.match?(/\A(DNS|IP):/) ? name : "DNS:#{name}")
      end
      names.uniq
    end

    def base_cert(subject, public_key, serial, ttl)
      now = Time.now.utc
      cert = OpenSSL::X509::Certificate.new
      cert.version = 2
      cert.serial = serial
      cert.subject = OpenSSL::X509::Name.new([['CN', subject, OpenSSL::ASN1::UTF8STRING]])
      cert.issuer = @cert ? @cert.subject : cert.subject
      cert.public_key = public_key
      cert.not_before = now - DAY
      cert.not_after = now + ttl
      cert
    end

    def build_ca_cert(ca_name)
      cert = base_cert(ca_name, @key, 1, CA_TTL)
      cert.issuer = cert.subject
      ef = extension_factory(cert, cert)
      cert.add_extension(ef.create_extension('nsComment', NS_COMMENT))
      cert.add_extension(ef.create_extension('basicConstraints', 'CA:TRUE', true))
      cert.add_extension(ef.create_extension('keyUsage', 'keyCertSign,cRLSign', true))
      cert.add_extension(ef.create_extension('subjectKeyIdentifier', 'hash'))
      cert.add_extension(ef.create_extension('authorityKeyIdentifier', 'keyid:always'))
      cert.sign(@key, OpenSSL::Digest.new('SHA256'))
      cert
    end

    def build_host_cert(certname, key, serial, san)
      cert = base_cert(certname, key, serial, HOST_TTL)
      ef = extension_factory(cert, @cert)
      usage = key.is_a?(OpenSSL::PKey::RSA) ? 'digitalSignature,keyEncipherment' : 'digitalSignature'
      cert.add_extension(ef.create_extension('nsComment', NS_COMMENT))
      cert.add_extension(ef.create_extension('basicConstraints', 'CA:FALSE', true))
      cert.add_extension(ef.create_extension('keyUsage', usage, true))
      cert.add_extension(ef.create_extension('extendedKeyUsage', 'serverAuth,clientAuth', true))
      cert.add_extension(ef.create_extension('subjectKeyIdentifier', 'hash'))
      cert.add_extension(ef.create_extension('authorityKeyIdentifier', 'keyid:always'))
      cert.add_extension(ef.create_extension('subjectAltName', san.join(',')))
      cert.sign(@key, OpenSSL::Digest.new('SHA256'))
      cert
    end

    def extension_factory(subject_cert, issuer_cert)
      ef = OpenSSL::X509::ExtensionFactory.new
      ef.subject_certificate = subject_cert if subject_cert
      ef.issuer_certificate = issuer_cert
      ef
    end

    def append_inventory(cert)
      line = format('0x%04x %s %s /CN=%s', cert.serial.to_i,
                    cert.not_before.utc.strftime(TIME_FORMAT),
                    cert.not_after.utc.strftime(TIME_FORMAT), common_name(cert))
      File.open(path('inventory.txt'), 'a') { |f| f.puts(line) }
    end

    def common_name(cert)
      entry = cert.subject.to_a.find { |name, _value, _type| name == 'CN' }
      entry && entry[1]
    end

    # The serial of certname: from signed/ if present, else the newest inventory entry.
    def serial_of(certname)
      cert = certificate(certname)
      return cert.serial.to_i if cert

      found = inventory.reverse.find { |_serial, name| name == certname }
      raise Error, "#{certname} is not known to the CA at #{@cadir}" unless found

      found.first
    end

    def infra?(certname)
      File.readlines(path('infra_inventory.txt')).map(&:strip).include?(certname)
    end

    def revoke_infra(certname, serial)
      serials = File.readlines(path('infra_serials')).map { |l| Integer(l.strip) }
      serials << serial unless serials.include?(serial)
      write_file(path('infra_serials'), serials.map { |s| "#{s}\n" }.join, 0o644)
      infra = OpenSSL::X509::CRL.new(File.read(path('infra_crl.pem')))
      entries = infra.revoked.map { |r| [r.serial.to_i, r.time] }
      entries << [serial, Time.now.utc] unless entries.any? { |s, _| s == serial }
      write_crl(path('infra_crl.pem'), entries, crl_number(infra) + 1)
      certname
    end

    def crl_number(crl)
      ext = crl.extensions.find { |e| e.oid == 'crlNumber' }
      ext ? OpenSSL::ASN1.decode(ext.value_der).value.to_i : 0
    end

    def write_crl(file, entries, number)
      now = Time.now.utc
      crl = OpenSSL::X509::CRL.new
      crl.version = 1
      crl.issuer = @cert.subject
      crl.last_update = now - 1
      crl.next_update = now + CRL_TTL
      entries.sort_by(&:first).each { |serial, time| crl.add_revoked(revoked_entry(serial, time)) }
      ef = extension_factory(nil, @cert)
      ef.crl = crl
      crl.add_extension(ef.create_extension('authorityKeyIdentifier', 'keyid:always'))
      crl.add_extension(OpenSSL::X509::Extension.new('crlNumber', OpenSSL::ASN1::Integer(number)))
      crl.sign(@key, OpenSSL::Digest.new('SHA256'))
      write_file(file, crl.to_pem, 0o644)
    end

    def revoked_entry(serial, time)
      revoked = OpenSSL::X509::Revoked.new
      revoked.serial = serial
      revoked.time = time
      reason = OpenSSL::ASN1::Enumerated(OpenSSL::OCSP::REVOKED_STATUS_KEYCOMPROMISE)
      revoked.add_extension(OpenSSL::X509::Extension.new('CRLReason', reason))
      revoked
    end

    def write_host_files(certname, ssldir, cert, key)
      files = {
        cert: File.join(ssldir, 'certs', "#{certname}.pem"),
        ca: File.join(ssldir, 'certs', 'ca.pem'),
        key: File.join(ssldir, 'private_keys', "#{certname}.pem"),
        public_key: File.join(ssldir, 'public_keys', "#{certname}.pem"),
        crl: File.join(ssldir, 'crl.pem')
      }
      { 'certs' => 0o755, 'private_keys' => 0o750, 'public_keys' => 0o755 }.each do |sub, mode|
        FileUtils.mkdir_p(File.join(ssldir, sub))
        File.chmod(mode, File.join(ssldir, sub))
      end
      write_file(files[:cert], cert.to_pem, 0o644)
      write_file(files[:ca], @cert.to_pem, 0o644)
      write_file(files[:key], key.private_to_pem, 0o600)
      write_file(files[:public_key], key.public_to_pem, 0o644)
      write_file(files[:crl], File.read(crl_path), 0o644)
      files
    end

    # Writes via a temporary file and a rename so readers never see half a file.
    def write_file(file, content, mode)
      FileUtils.mkdir_p(File.dirname(file))
      tmp = "#{file}.tmp#{Process.pid}"
      File.open(tmp, 'w', mode) { |f| f.write(content) }
      File.chmod(mode, tmp)
      File.rename(tmp, file)
    end
  end
end

# Command line, for callers that are not Ruby (cargo tests, the demo):
#
#   ruby spec/support/test_ca.rb create DIR [--ca-name NAME]
#   ruby spec/support/test_ca.rb sign DIR CERTNAME [--dns NAME]... [--infra] [--no-loopback]
#   ruby spec/support/test_ca.rb revoke|clean DIR CERTNAME
#   ruby spec/support/test_ca.rb host-files DIR CERTNAME SSLDIR
#
# Prints the paths it wrote, one `key=path` a line.
if File.expand_path($PROGRAM_NAME) == File.expand_path(__FILE__)
  require 'optparse'

  options = { dns: [], infra: false, loopback: true, ca_name: 'Puppet CA: test' }
  args = OptionParser.new do |o|
    o.banner = 'Usage: test_ca.rb create|sign|revoke|clean|host-files DIR [CERTNAME [SSLDIR]] [options]'
    o.on('--ca-name NAME') { |v| options[:ca_name] = v }
    o.on('--dns NAME', 'extra subjectAltName (DNS:x, IP:1.2.3.4 or a bare DNS name)') { |v| options[:dns] << v }
    o.on('--infra', 'record the certname in infra_inventory.txt') { options[:infra] = true }
    o.on('--no-loopback', 'leave localhost/127.0.0.1 out of the certificate') { options[:loopback] = false }
  end.parse(ARGV)
  command, dir, certname, ssldir = args
  begin
    case [command, args.size]
    when ['create', 2]
      ca = PeFailoverSpec::TestCA.create(dir, ca_name: options[:ca_name])
      puts "ca_crt=#{ca.ca_cert_path}", "crl=#{ca.crl_path}"
    when ['sign', 3]
      ca = PeFailoverSpec::TestCA.open(dir)
      ca.sign(certname, dns_alt_names: options[:dns], loopback: options[:loopback], infra: options[:infra])
      puts "cert=#{ca.signed_path(certname)}", "key=#{ca.host_key_path(certname)}"
    when ['revoke', 3], ['clean', 3]
      puts "serial=#{PeFailoverSpec::TestCA.open(dir).public_send(command, certname)}"
    when ['host-files', 4]
      files = PeFailoverSpec::TestCA.open(dir).host_files(certname, ssldir, dns_alt_names: options[:dns],
                                                                             loopback: options[:loopback])
      files.each { |k, v| puts "#{k}=#{v}" }
    else
      warn 'Usage: test_ca.rb create|sign|revoke|clean|host-files DIR [CERTNAME [SSLDIR]] [options]'
      exit 2
    end
  rescue PeFailoverSpec::TestCA::Error, SystemCallError, OpenSSL::OpenSSLError => e
    warn "test_ca: #{e.message}"
    exit 1
  end
end
