# frozen_string_literal: true

require 'tmpdir'
require_relative '../../support/status_files'
require_relative '../../../lib/puppet_x/pe_failover/status'

RSpec.describe PuppetX::PeFailover::Status do
  files = PeFailoverSpec::StatusFiles
  let(:dir) { Dir.mktmpdir('pe_failover-status') }
  let(:now) { Time.at(1_800_000_000) }

  after { FileUtils.rm_rf(dir) }

  def read(config, **opts)
    described_class.read(config: config, now: now, **opts)
  end

  context 'on an active primary' do
    let(:config) { files.config(dir, role: 'active', certname: 'a.example.com', replicas: ['b.example.com', 'c.example.com']) }

    it 'is healthy when every replica and kind synced recently, and says how long ago' do
      %w[b.example.com c.example.com].each do |r|
        files.sender(dir, r, 'ca', success: now.to_i - 12)
        files.sender(dir, r, 'nc', success: now.to_i - 40, outcome: 'up_to_date')
      end
      status = read(config)
      expect(status).to include('host' => 'a.example.com', 'role' => 'active', 'healthy' => true, 'problems' => [])
      expect(status['replicas'].keys).to eq(['b.example.com', 'c.example.com'])
      expect(status['replicas']['b.example.com']['ca']).to include(
        'last_success' => '2027-01-15T07:59:48Z', 'seconds_since_success' => 12, 'shipped' => 'ab' * 32,
        'outcome' => 'committed', 'last_error' => nil, 'healthy' => true,
      )
      expect(status['entries'].map { |e| [e['peer'], e['kind'], e['age_seconds']] })
        .to eq([['b.example.com', 'ca', 12], ['b.example.com', 'nc', 40], ['c.example.com', 'ca', 12], ['c.example.com', 'nc', 40]])
    end

    it 'reports a failed sync with its message, a never-synced kind and a stale one' do
      files.sender(dir, 'b.example.com', 'ca', success: now.to_i - 100, outcome: 'failed',
                                               last_error: files.error('fenced', 'b.example.com has been promoted', now.to_i - 1))
      files.sender(dir, 'c.example.com', 'ca', success: now.to_i - 7200)
      status = read(config)
      expect(status['healthy']).to be(false)
      expect(status['problems']).to eq([
                                         'ca to b.example.com: last sync failed: b.example.com has been promoted',
                                         'ca to c.example.com: last success 7200s ago (2027-01-15T06:00:00Z), more than 660s',
                                       ])
      expect(status['replicas']['b.example.com']['ca']['last_error'])
        .to eq('kind' => 'fenced', 'message' => 'b.example.com has been promoted', 'time' => '2027-01-15T07:59:59Z')
      expect(read(config, max_age: 10_000)['problems'].grep(%r{c\.example\.com: last success})).to eq([])
    end

    it 'leaves nc out when classifier replication is disabled' do
      config = files.config(dir, role: 'active', certname: 'a.example.com', replicas: ['b.example.com'], nc: false)
      files.sender(dir, 'b.example.com', 'ca', success: now.to_i)
      expect(read(config)).to include('healthy' => true)
      expect(read(config)['replicas']).to match('b.example.com' => { 'ca' => a_hash_including('seconds_since_success' => 0) })
    end

    it 'reports an unreadable or foreign status file without raising' do
      files.sender(dir, 'b.example.com', 'nc', success: now.to_i)
      File.write(File.join(dir, 'state', 'replicas', 'b.example.com', 'ca.status.json'), '{"format":')
      files.write_json(File.join(dir, 'state', 'replicas', 'c.example.com', 'ca.status.json'), 'format' => 2)
      problems = read(config)['problems']
      expect(problems[0]).to match(%r{b\.example\.com/ca\.status\.json: cannot read: .*\(delete it; it is rewritten on the next run\)})
      expect(problems).to include(end_with('c.example.com/ca.status.json: status format 2, expected 1'))
    end

    it 'reads an empty status file (left by a crash) as none' do
      files.sender(dir, 'b.example.com', 'ca', success: now.to_i)
      path = File.join(dir, 'state', 'replicas', 'c.example.com', 'ca.status.json')
      FileUtils.mkdir_p(File.dirname(path))
      File.write(path, '')
      empty = read(config)
      File.delete(path)
      expect(empty).to eq(read(config))
      expect(empty['problems'].join).not_to include('cannot read')
    end
  end

  context 'on a passive primary' do
    let(:config) { files.config(dir, role: 'passive', certname: 'b.example.com', nc: false) }

    it 'shows what was staged and applied, from which sender, and the kept certificates' do
      files.applier(dir, run: now.to_i - 3, staged: 'ee' * 32, applied: 'ee' * 32, kept: ['b.example.com'])
      files.receiver(dir, success: now.to_i - 4)
      status = read(config)
      expect(status).to include('role' => 'passive', 'healthy' => true)
      expect(status['replicas']['b.example.com']['ca']).to include(
        'staged' => 'ee' * 32, 'applied' => 'ee' * 32, 'seconds_since_success' => 3, 'last_run_ok' => true,
        'received' => 'cd' * 32, 'sender' => 'a.example.com', 'replica_only_signed' => ['b.example.com'],
      )
    end

    it 'is unhealthy before the first apply, after a failed apply, and after a failed receive' do
      expect(read(config)['problems']).to eq(['ca: nothing applied yet'])
      files.applier(dir, run: now.to_i, ok: false, last_error: files.error('refused', 'would delete 80% of the CA', now.to_i))
      expect(read(config)['problems']).to eq(['ca: last apply failed: would delete 80% of the CA'])
      files.applier(dir, run: now.to_i - 60)
      files.receiver(dir, success: now.to_i - 60, last_error: files.error('fenced', 'b.example.com has been promoted', now.to_i - 5))
      expect(read(config)['problems']).to eq(["ca: the receiver's last session failed: b.example.com has been promoted"])
      files.receiver(dir, success: now.to_i, last_error: files.error('fenced', 'old', now.to_i - 5))
      expect(read(config)['healthy']).to be(true)
    end
  end

  it "reads a passive's classifier status from the nc subdirectory, with its own last success" do
    config = files.config(dir, role: 'passive', certname: 'b.example.com', nc: true)
    files.applier(dir, run: now.to_i - 3)
    files.write_json(File.join(dir, 'state', 'nc', 'status.json'),
                     'format' => 1, 'role' => 'passive', 'kind' => 'nc', 'staged' => nil,
                     'applied' => { 'digest' => 'ff' * 32, 'at' => files.stamp(now.to_i - 100) },
                     'pending_txns' => 0, 'last_run' => files.stamp(now.to_i - 10), 'last_run_ok' => false,
                     'last_success' => files.stamp(now.to_i - 100), 'missing_classes' => ['All Nodes: role::x in production'],
                     'warnings' => [], 'last_error' => files.error('refused', 'B lacks class role::x', now.to_i - 10))
    status = read(config)
    expect(status['replicas']['b.example.com']['nc']).to include('applied' => 'ff' * 32, 'seconds_since_success' => 100,
                                                                 'missing_classes' => ['All Nodes: role::x in production'])
    expect(status['problems']).to eq(['nc: last apply failed: B lacks class role::x'])
  end

  it 'names a replica on another SSH port host:port, and finds its files where the core writes them (host_port)' do
    config = files.write_json(File.join(dir, 'etc', 'config.json'),
                              'role' => 'active', 'certname' => 'a.example.com', 'state_dir' => File.join(dir, 'state'),
                              'replicas' => [{ 'host' => '127.0.0.1', 'port' => 2222 }], 'nc' => { 'enabled' => false })
    files.sender(dir, '127.0.0.1_2222', 'ca', success: now.to_i - 1)
    status = read(config)
    expect(status).to include('healthy' => true)
    expect(status['replicas'].keys).to eq(['127.0.0.1:2222'])
  end

  it "judges staleness by the configuration's intervals, and shows the classifier only once it is shipped" do
    config = files.write_json(File.join(dir, 'etc', 'config.json'),
                              'role' => 'active', 'certname' => 'a.example.com', 'state_dir' => File.join(dir, 'state'),
                              'replicas' => [{ 'host' => 'b.example.com' }], 'watch' => { 'verify_interval' => 30 },
                              'nc' => { 'enabled' => true, 'interval' => 10 })
    files.sender(dir, 'b.example.com', 'ca', success: now.to_i - 100)
    expect(read(config)['problems']).to eq([]) # 100 s < 2 * 30 + 60
    expect(read(config)['replicas']['b.example.com'].keys).to eq(['ca'])
    files.sender(dir, 'b.example.com', 'ca', success: now.to_i - 130)
    files.sender(dir, 'b.example.com', 'nc', success: now.to_i - 81)
    expect(read(config)['problems']).to eq(['ca to b.example.com: last success 130s ago (2027-01-15T07:57:50Z), more than 120s',
                                            'nc to b.example.com: last success 81s ago (2027-01-15T07:58:39Z), more than 80s'])
  end

  it 'raises a clear error for a missing or broken configuration' do
    expect { read(File.join(dir, 'nope.json')) }
      .to raise_error(PuppetX::PeFailover::InvalidInputError, %r{nope\.json: no such configuration file \(is pe_failover::active})
    File.write(File.join(dir, 'bad.json'), '[1]')
    expect { read(File.join(dir, 'bad.json')) }.to raise_error(PuppetX::PeFailover::InvalidInputError, %r{not a JSON object})
  end

  it 'reports a configuration with neither role' do
    config = files.write_json(File.join(dir, 'c.json'), 'role' => 'primary', 'state_dir' => dir)
    expect(read(config)['problems']).to eq([%(#{config}: role is "primary", neither "active" nor "passive")])
  end
end
