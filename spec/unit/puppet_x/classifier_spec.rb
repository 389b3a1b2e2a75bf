# frozen_string_literal: true

require 'json'
require 'tmpdir'
require_relative '../../../lib/puppet_x/pe_failover/classifier'
require_relative '../../support/nc_emulator_process'

# The facade over real emulator processes: an active (the real PE 2016 dump
# of master1) and an empty passive with the classes that dump needs.
RSpec.describe PuppetX::PeFailover::Classifier::Client do
  before(:all) do
    @tmp = Dir.mktmpdir('nc_facade')
    seed = JSON.parse(File.read(PeFailoverSpec::NcEmulatorProcess.fixture('ncio-pe2016-groups-master1.min.json')))
    ca = PeFailoverSpec::TestCA.create(File.join(@tmp, 'ca'))
    @active = PeFailoverSpec::NcEmulatorProcess.new(dir: File.join(@tmp, 'active'), ca: ca, seed: seed).start
    catalog = { 'production' => seed.flat_map { |g| g['classes'].to_a }.to_h, 'agent-specified' => {} }
    @passive = PeFailoverSpec::NcEmulatorProcess.new(dir: File.join(@tmp, 'passive'), ca: ca, classes: catalog).start
    @files = ca.host_files('client.test', File.join(@tmp, 'client'))
    @stranger = ca.host_files('stranger.test', File.join(@tmp, 'stranger'))
  end

  after(:all) do
    @active&.stop
    @passive&.stop
    FileUtils.rm_rf(@tmp)
  end

  def client(emulator, files = @files, **options)
    described_class.new(server: emulator.base_url, cert: files[:cert], key: files[:key], cacert: files[:ca],
                        crl: files[:crl], retry_for: 1, **options)
  end

  it 'replicates the active to the passive: noop plan, sync, then nothing to do' do
    dump = client(@active).fetch_active('master1.puppet.vm' => 'master2.puppet.vm')
    expect(dump['digest']).to match(%r{\A\h{64}\z})
    expect(dump['rewrites']).not_to be_empty
    passive = client(@passive)
    plan = passive.sync(dump['groups'], noop: true)
    expect(plan['noop']).to be(true)
    expect(plan['plan']['operations'].map { |o| o['kind'] }.uniq).to eq(['create'])
    expect(@passive.stats['writes']).to eq(0)

    report = passive.sync(dump['groups'])
    expect(report['in_sync']).to be(true)
    expect(report['after_digest']).to eq(dump['digest'])
    expect(report['executed'].map { |e| e['status'] }.uniq).to eq([201])
    expect(PuppetX::PeFailover::Classifier.digest(passive.groups)).to eq(dump['digest'])

    @passive.reset_stats
    expect(passive.sync(dump['groups'])['counts']['writes']).to eq(0)
    expect(@passive.stats['writes']).to eq(0)
  end

  it 'raises the guard errors as Ruby exceptions with their kind and host' do
    expect { client(@passive).sync([]) }.to raise_error(PuppetX::PeFailover::RefusedError, %r{empty}) { |e|
      expect(e.kind).to eq(:refused)
      expect(e.host).to eq("127.0.0.1:#{@passive.port}")
    }
    expect { client(@passive).sync(client(@passive).groups, promoted: true) }
      .to raise_error(PuppetX::PeFailover::FencedError, %r{promoted})
  end

  it 'names the certname and the allowlist on a 401' do
    expect { client(@passive, @stranger).groups }.to raise_error(PuppetX::PeFailover::UnauthorizedError) { |e|
      expect(e.message).to include('"stranger.test"', '/etc/puppetlabs/console-services/rbac-certificate-allowlist')
      expect(e.path).to eq(@stranger[:cert])
    }
  end

  it 'names the wrong file before connecting' do
    expect { client(@passive, @files.merge(key: @stranger[:key])) }
      .to raise_error(PuppetX::PeFailover::VerificationError, %r{does not belong}) { |e| expect(e.path).to eq(@stranger[:key]) }
  end

  it 'reports status, classes and single groups' do
    passive = client(@passive)
    expect(passive.certname).to eq('client.test')
    expect(passive.status['state']).to eq('running')
    expect(passive.classes(environment: 'production').map { |c| c['name'] }).to include('puppet_enterprise')
    expect(passive.update_classes).to be_nil
    expect(passive.group(PuppetX::PeFailover::Classifier::ROOT_GROUP_ID)['name']).to eq('All Nodes')
    expect(passive.group('0badc0de-0000-4000-8000-000000000000')).to be_nil
  end

  it 'keeps other Ruby threads running while it waits for the classifier' do
    @passive.fault('slow', count: 1, delay: 1.0)
    ticks = 0
    ticker = Thread.new { loop { ticks += 1; sleep 0.05 } }
    client(@passive).groups
    ticker.kill
    expect(ticks).to be >= 10
  end
end
