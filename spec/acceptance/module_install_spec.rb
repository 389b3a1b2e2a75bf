# frozen_string_literal: true

# Builds the module tarball, installs it with `puppet module install` into a
# temporary modulepath, and runs `puppet apply` of a manifest that calls the
# module's functions on a generated ssl directory. Puppet's own state (confdir,
# vardir, codedir) is kept inside the temporary directory.

require 'fileutils'
require 'json'
require 'open3'
require 'tmpdir'
require_relative '../support/test_ca'
require_relative '../support/manifest_oracle'

ROOT = File.expand_path('../..', __dir__) unless defined?(ROOT)

RSpec.describe 'the module tarball', :acceptance do
  metadata = JSON.parse(File.read(File.join(ROOT, 'metadata.json')))
  tarball = File.join(ROOT, 'pkg', "#{metadata['name']}-#{metadata['version']}.tar.gz")

  before(:all) do
    out, status = Open3.capture2e('rake', 'build', chdir: ROOT)
    raise "rake build failed:\n#{out}" unless status.success?

    @tmp = Dir.mktmpdir('pe_failover-acceptance')
    @modules = File.join(@tmp, 'modules')
    FileUtils.mkdir_p(@modules)
    @puppet_dirs = %w[confdir vardir codedir logdir rundir].flat_map do |d|
      FileUtils.mkdir_p(File.join(@tmp, d))
      ["--#{d}", File.join(@tmp, d)]
    end
    @install_output, @install_status = puppet('module', 'install', '--ignore-dependencies', '--target-dir', @modules, tarball)
  end

  after(:all) { FileUtils.rm_rf(@tmp) if @tmp }

  def puppet(*args)
    Open3.capture2e('puppet', *args, *@puppet_dirs)
  end

  it 'contains the module, the native extension and the Rust sources, without build output' do
    listing, status = Open3.capture2e('tar', '-tzf', tarball)
    expect(status).to be_success
    files = listing.lines.map(&:chomp)
    top = "#{metadata['name']}-#{metadata['version']}"
    abi = RUBY_VERSION[%r{\A\d+\.\d+}]
    expect(files).to include("#{top}/metadata.json", "#{top}/lib/puppet/functions/pe_failover/ssl_digest.rb",
                             "#{top}/lib/puppet_x/pe_failover/#{abi}/pe_failover_native.so",
                             "#{top}/ext/pe_failover_core/src/snapshot.rs", "#{top}/Cargo.lock")
    expect(files.grep(%r{/target/|/spec/|\.partial\z})).to eq([])
  end

  it 'installs offline with puppet module install, and both functions work from puppet apply' do
    expect(@install_status).to be_success, @install_output
    expect(File).to exist(File.join(@modules, 'pe_failover', 'lib', 'puppet_x', 'pe_failover',
                                    RUBY_VERSION[%r{\A\d+\.\d+}], 'pe_failover_native.so'))

    ssl = File.join(@tmp, 'ssl')
    ca = PeFailoverSpec::TestCA.create(ssl, key_bits: 1024)
    %w[agent1 agent2].each { |n| ca.sign("#{n}.example.com") }
    ca.host_files('primary.example.com', ssl)
    copy = File.join(@tmp, 'ssl-copy')
    FileUtils.cp_r(ssl, copy, preserve: true)
    ca.sign('agent3.example.com')
    ca.revoke('agent1.example.com')
    out_file = File.join(@tmp, 'result.json')

    manifest = <<~PP
      $digest = pe_failover::ssl_digest('#{ssl}', ['private_keys'])
      $diff = pe_failover::ssl_diff('#{copy}', '#{ssl}', ['host_keys'])
      file { '#{out_file}':
        ensure  => file,
        content => to_json({ 'digest' => $digest, 'diff' => $diff }),
      }
    PP
    modulepath = [@modules, '/usr/share/puppet/modules'].join(':')
    out, status = puppet('apply', '--modulepath', modulepath, '--detailed-exitcodes', '-e', manifest)
    expect(status.exitstatus).to eq(2), out # 2: changes applied, no failures

    result = JSON.parse(File.read(out_file))
    expect(result['digest']).to eq(PeFailoverSpec::ManifestOracle.digest(ssl) { |rel| rel.start_with?('private_keys') })
    expect(result['diff']).to eq(
      'added' => ['ca/signed/agent3.example.com.pem'],
      'changed' => ['ca/ca_crl.pem', 'ca/inventory.txt', 'ca/serial'],
      'removed' => [],
    )

    # A second run with nothing changed in the tree changes nothing.
    out, status = puppet('apply', '--modulepath', modulepath, '--detailed-exitcodes', '-e', manifest)
    expect(status.exitstatus).to eq(0), out
  end

  it 'fails the run with a clear message for a missing directory' do
    expect(@install_status).to be_success, @install_output
    modulepath = [@modules, '/usr/share/puppet/modules'].join(':')
    out, status = puppet('apply', '--modulepath', modulepath, '-e', "notice(pe_failover::ssl_digest('#{@tmp}/nope'))")
    expect(status).not_to be_success
    expect(out).to include("pe_failover::ssl_digest(#{@tmp}/nope): cannot scan #{@tmp}/nope: No such file or directory")
  end
end
