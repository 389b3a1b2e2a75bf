# frozen_string_literal: true

require 'json'
require 'open3'
require 'tmpdir'
require_relative '../../../support/status_files'

# Runs the real face, `puppet pe_failover ...`, with the module's lib
# directory as --libdir, against configurations and status files in a
# temporary directory. Puppet's own state stays there too.
RSpec.describe 'puppet pe_failover (face)' do
  files = PeFailoverSpec::StatusFiles
  let(:libdir) { File.expand_path('../../../../lib', __dir__) }

  let(:dir) { Dir.mktmpdir('pe_failover-face') }
  let(:facts_file) { File.join(dir, 'facts.d', 'pe_failover.yaml') }

  after { FileUtils.rm_rf(dir) }

  def puppet(*args, env: {})
    dirs = %w[confdir vardir codedir logdir rundir].flat_map { |d| ["--#{d}", File.join(dir, 'puppet', d)] }
    out, err, status = Open3.capture3(env, 'puppet', 'pe_failover', *args, '--libdir', libdir, *dirs, '--color=false')
    [status.exitstatus, out, err]
  end

  def facts(text)
    FileUtils.mkdir_p(File.dirname(facts_file))
    File.write(facts_file, text)
  end

  context 'status' do
    let(:config) { files.config(dir, role: 'active', certname: 'a.example.com', replicas: ['b.example.com'], nc: false) }

    it 'prints a table and exits 0 when healthy' do
      files.sender(dir, 'b.example.com', 'ca', success: Time.now.to_i - 2)
      code, out, err = puppet('status', '--config_file', config)
      expect([code, err]).to eq([0, ''])
      expect(out).to start_with("pe_failover on a.example.com (active): HEALTHY\n")
      expect(out).to match(%r{^ca\s+sync\s+b\.example\.com\s+ok\s+\S+Z\s+\d+s\s+abababababab\s+-$})
    end

    it 'renders data as JSON and exits 1 when unhealthy' do
      files.sender(dir, 'b.example.com', 'ca', success: Time.now.to_i - 60, outcome: 'failed',
                                               last_error: files.error('network', 'b.example.com:22: connection refused', Time.now.to_i))
      code, out, = puppet('status', '--config_file', config, '--render-as', 'json')
      expect(code).to eq(1)
      data = JSON.parse(out)
      expect(data).to include('host' => 'a.example.com', 'role' => 'active', 'healthy' => false,
                              'problems' => ['ca to b.example.com: last sync failed: b.example.com:22: connection refused'])
      expect(data['replicas']['b.example.com']['ca']['last_error']['kind']).to eq('network')
    end

    it 'reads the configuration named by PE_FAILOVER_CONFIG, and stale means unhealthy after --max_age' do
      files.sender(dir, 'b.example.com', 'ca', success: Time.now.to_i - 600)
      code, out, = puppet('status', '--render-as', 'json', env: { 'PE_FAILOVER_CONFIG' => config })
      expect([code, JSON.parse(out)['healthy']]).to eq([0, true])
      code, out, = puppet('status', '--max_age', '300', '--render-as', 'json', env: { 'PE_FAILOVER_CONFIG' => config })
      expect(code).to eq(1)
      expect(JSON.parse(out)['problems'].first).to match(%r{\Aca to b\.example\.com: last success 6\d\ds ago .* more than 300s\z})
    end

    it 'fails with the reason for a missing configuration' do
      code, out, err = puppet('status', '--config_file', File.join(dir, 'none.json'))
      expect(code).to eq(1)
      expect(out).to eq('')
      expect(err).to include('none.json: no such configuration file')
    end
  end

  context 'promote and demote' do
    it 'promotes a passive (configuration and facts file), says what completes it, and is idempotent' do
      config = files.config(dir, role: 'passive', certname: 'b.example.com')
      facts(%(pe_failover_mode: "passive"\n))
      code, out, err = puppet('promote', '--config_file', config, '--facts_file', facts_file)
      expect([code, err]).to eq([0, ''])
      expect(out).to include('b.example.com: role passive -> active', 'fenced', 'pe_failover::active')
      expect(JSON.parse(File.read(config))['role']).to eq('active')
      expect(File.read(facts_file)).to eq(%(pe_failover_mode: "active"\n))

      code, out, = puppet('promote', '--config_file', config, '--facts_file', facts_file, '--render-as', 'json')
      expect(code).to eq(0)
      expect(JSON.parse(out)).to include('ok' => true, 'changed' => [], 'role_before' => 'active', 'role' => 'active')
    end

    it 'demotes an active: it stops shipping' do
      config = files.config(dir, role: 'active', certname: 'a.example.com', replicas: ['b.example.com'])
      facts(%(pe_failover_mode: "active"\npe_failover_passive_master: "b.example.com"\n))
      code, out, = puppet('demote', '--config_file', config, '--facts_file', facts_file, '--render-as', 'json')
      expect(code).to eq(0)
      expect(JSON.parse(out)).to include('role_before' => 'active', 'role' => 'passive', 'stopped_replicas' => ['b.example.com'])
      expect(JSON.parse(File.read(config))).to include('role' => 'passive', 'replicas' => [])
      expect(File.read(facts_file)).to eq(%(pe_failover_mode: "passive"\n))
    end
  end

  it 'lists its actions in puppet help' do
    out, status = Open3.capture2e('puppet', 'help', 'pe_failover', '--libdir', libdir,
                                  *%w[confdir vardir codedir].flat_map { |d| ["--#{d}", File.join(dir, 'puppet', d)] })
    expect(status).to be_success, out
    %w[status sync diff promote demote].each { |a| expect(out).to match(%r{^\s+#{a}\s}) }
  end

  it 'runs sync and diff through the native core, and exits 1 when they fail' do
    config = files.config(dir, role: 'active', certname: 'a.example.com', replicas: [], nc: false)
    %w[sync diff].each do |action|
      code, out, err = puppet(action, '--config_file', config)
      expect(code).to eq(1), "#{action}: #{out}#{err}"
      expect(err).not_to be_empty
    end
  end
end
