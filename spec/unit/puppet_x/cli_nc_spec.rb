# frozen_string_literal: true

require 'json'
require 'tmpdir'
require_relative '../../support/replication_pair'
require_relative '../../support/nc_emulator_process'

# The real CLI with classifier replication on: a replication pair (real
# sshd, the CLI's own `receive` as the forced command) plus a classifier
# emulator per primary. `sync` ships the CA and then the groups, `apply`
# applies both, and `nc dump|diff|apply` work on their own.
# The examples build on each other's state: run them in order.
RSpec.describe 'pe_failover CLI with classifier replication', order: :defined do
  CLI_NC_ACTIVE = 'master1.puppet.vm'
  CLI_NC_PASSIVE = 'master2.puppet.vm'

  before(:all) do
    @tmp = Dir.mktmpdir('pe_failover_cli_nc')
    @pair = PeFailoverSpec::ReplicationPair.new(@tmp).start
    seed = JSON.parse(File.read(PeFailoverSpec::NcEmulatorProcess.fixture('ncio-pe2016-groups-master1.min.json')))
    catalog = Hash.new { |h, k| h[k] = {} }
    seed.each do |g|
      (g['classes'] || {}).each { |c, params| catalog[g['environment']][c] = params.keys.to_h { |p| [p, nil] } }
    end
    @a_nc = PeFailoverSpec::NcEmulatorProcess.new(dir: File.join(@tmp, 'a_nc'), ca: @pair.ca,
                                                  allowlist: ['a.test', 'client.test'], seed: seed).start
    @b_nc = PeFailoverSpec::NcEmulatorProcess.new(dir: File.join(@tmp, 'b_nc'), ca: @pair.ca,
                                                  allowlist: ['b.test', 'client.test'], classes: catalog).start
    @pair.write_active do |c|
      c['nc'] = { 'enabled' => true, 'server' => @a_nc.base_url, 'hostnames' => { CLI_NC_ACTIVE => CLI_NC_PASSIVE } }
    end
    passive = JSON.parse(File.read(@pair.passive_config))
    passive['nc'] = { 'enabled' => true, 'server' => @b_nc.base_url }
    File.write(@pair.passive_config, JSON.pretty_generate(passive))
  end

  after(:all) do
    @a_nc&.stop
    @b_nc&.stop
    @pair&.stop
    FileUtils.rm_rf(@tmp)
  end

  let(:pair) { @pair }

  def run!(*args)
    out, err, status = pair.cli(*args)
    expect(status.exitstatus).to eq(0), "pe_failover #{args.join(' ')} exited #{status.exitstatus}:\n#{out}\n#{err}"
    out
  end

  def b_groups
    @b_nc.client.get('/classifier-api/v1/groups').json
  end

  it 'nc dump prints the groups, raw or with the host names rewritten' do
    raw = run!('nc', 'dump', '--config', pair.active_config)
    expect(JSON.parse(raw)).to be_an(Array)
    expect(raw).to include(CLI_NC_ACTIVE)
    rewritten = run!('nc', 'dump', '--config', pair.active_config, '--transformed')
    expect(rewritten).to include(CLI_NC_PASSIVE)
    expect(rewritten).not_to include(CLI_NC_ACTIVE)
    expect(JSON.parse(rewritten).size).to eq(JSON.parse(raw).size)
  end

  it 'nc diff on the passive before anything arrived: nothing to compare, nothing written' do
    json = JSON.parse(run!('nc', 'diff', '--config', pair.passive_config, '--json'))
    expect(json['ok']).to be(true)
    expect(json['report']['dump']).to be_nil
    expect(b_groups.map { |g| g['name'] }).to eq(['All Nodes'])
  end

  it 'sync ships the CA and the groups; nc diff shows the plan; apply brings both' do
    json = JSON.parse(run!('sync', '--config', pair.active_config, '--json'))
    expect(json['ok']).to be(true), json['lines'].join("\n")
    expect(json['replicas'].first['outcome']).to eq('committed')
    expect(json['nc']['replicas'].first).to include('outcome' => 'committed', 'ok' => true)
    expect(json['lines'].join("\n")).to match(%r{\[SUCCESS\] nc to 127\.0\.0\.1:\d+: committed})

    diff = run!('nc', 'diff', '--config', pair.passive_config)
    expect(diff).to match(%r{nc \(noop\): classifier differs from groups \h+: \d+ planned calls})
    expect(b_groups.size).to eq(1)

    out = run!('apply', '--config', pair.passive_config)
    expect(out).to match(%r{\[SUCCESS\] nc: classifier brought to groups})
    expect(pair.converged?).to be(true)
    names = JSON.parse(run!('nc', 'dump', '--config', pair.active_config)).map { |g| g['name'] }.sort
    expect(b_groups.map { |g| g['name'] }.sort).to eq(names)
    expect(JSON.generate(b_groups)).not_to include(CLI_NC_ACTIVE)
  end

  it 'a second round writes nothing; --no-nc ships the CA only; nc apply reports zero writes' do
    json = JSON.parse(run!('sync', '--config', pair.active_config, '--json'))
    expect(json['nc']['prepared']['changed']).to be(false)
    expect(json['nc']['replicas'].first['outcome']).to eq('up_to_date')
    expect(JSON.parse(run!('sync', '--config', pair.active_config, '--no-nc', '--json'))['nc']).to be_nil
    applied = JSON.parse(run!('nc', 'apply', '--config', pair.passive_config, '--json'))
    expect(applied['ok']).to be(true)
    expect(applied['report']['sync']['counts']['writes']).to eq(0)
    expect(applied['lines'].join).to include('classifier already holds groups')
  end
end
