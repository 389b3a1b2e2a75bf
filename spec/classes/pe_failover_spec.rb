# frozen_string_literal: true

require 'spec_helper'
require_relative '../support/classes'

RSpec.describe 'pe_failover' do
  let(:node) { 'a.example.com' }

  on_supported_os.each do |os, os_facts|
    context "on #{os}" do
      let(:facts) { PeFailoverSpec::Classes.facts(os_facts) }

      it { is_expected.to compile.with_all_deps }

      it 'creates the transfer group, but not the user (its shell depends on the role)' do
        is_expected.to contain_group('pe-transfer').with(ensure: 'present', system: true)
        is_expected.not_to contain_user('pe-transfer')
      end

      {
        '/opt/pe_failover' => ['root', 'root', '0755'],
        '/opt/pe_failover/bin' => ['root', 'root', '0755'],
        '/opt/pe_failover/etc' => ['root', 'pe-transfer', '0750'],
        '/opt/pe_failover/home' => ['root', 'pe-transfer', '0750'],
        '/opt/pe_failover/state' => ['root', 'pe-transfer', '0750'],
        '/opt/pe_failover/state/snapshots' => ['root', 'root', '0700'],
        '/opt/pe_failover/state/nc' => ['root', 'pe-transfer', '0750'],
      }.each do |dir, (owner, group, mode)|
        it "creates #{dir} #{owner}:#{group} #{mode}" do
          is_expected.to contain_file(dir).with(ensure: 'directory', owner: owner, group: group, mode: mode)
        end
      end

      it 'installs the command as a one-line wrapper around the Ruby CLI' do
        is_expected.to contain_file('/opt/pe_failover/bin/pe_failover')
          .with(ensure: 'file', owner: 'root', group: 'root', mode: '0755', content: PeFailoverSpec::Classes::WRAPPER)
          .that_requires('File[/opt/pe_failover/bin]')
      end

      it 'runs the watcher as a systemd service' do
        is_expected.to contain_file('/etc/systemd/system/pe_failover.service')
          .with(ensure: 'file', owner: 'root', group: 'root', mode: '0644', content: <<~UNIT)
            # Managed by Puppet (pe_failover). Local changes are overwritten.
            [Unit]
            Description=pe_failover watcher: replicates the Puppet CA and classifier groups
            Wants=network-online.target
            After=network-online.target

            [Service]
            Type=simple
            ExecStart=/opt/pe_failover/bin/pe_failover watch --config /opt/pe_failover/etc/config.json
            Restart=on-failure
            RestartSec=5

            [Install]
            WantedBy=multi-user.target
          UNIT
        is_expected.to contain_file('/etc/systemd/system/pe_failover.service')
          .that_notifies('Exec[pe_failover systemctl daemon-reload]')
        is_expected.to contain_exec('pe_failover systemctl daemon-reload')
          .with(command: 'systemctl daemon-reload', refreshonly: true)
          .that_comes_before('Service[pe_failover]')
        is_expected.to contain_service('pe_failover')
          .with(ensure: 'running', enable: true, provider: 'systemd')
          .that_subscribes_to(['File[/opt/pe_failover/bin/pe_failover]', 'File[/etc/systemd/system/pe_failover.service]'])
      end

      it 'writes no configuration, facts or cron entry on its own (the role classes do)' do
        is_expected.not_to contain_file('/opt/pe_failover/etc/config.json')
        is_expected.not_to contain_file('/opt/puppetlabs/facter/facts.d/pe_failover.yaml')
        is_expected.not_to contain_file('/etc/cron.d/pe_failover')
      end
    end
  end

  context 'with the base service provider in a sandbox' do
    let(:facts) { PeFailoverSpec::Classes.facts(on_supported_os['debian-11-x86_64']) }
    let(:params) do
      {
        base_dir: '/tmp/sb/opt/pe_failover',
        state_dir: '/tmp/sb/var/state',
        unit_dir: '/tmp/sb/systemd',
        pidfile: '/tmp/sb/run/watch.pid',
        service_provider: 'base',
        service_name: 'pe_failover-sb',
      }
    end
    let(:alive) do
      'pid=$(cat /tmp/sb/run/watch.pid 2>/dev/null) && kill -0 "$pid" 2>/dev/null && grep -qa pe_failover /proc/"$pid"/cmdline'
    end

    it { is_expected.to compile.with_all_deps }

    it 'puts every directory under the sandbox' do
      is_expected.to contain_file('/tmp/sb/opt/pe_failover/bin/pe_failover')
      is_expected.to contain_file('/tmp/sb/var/state').with(owner: 'root', group: 'pe-transfer', mode: '0750')
      is_expected.to contain_file('/tmp/sb/var/state/snapshots').with(mode: '0700')
      paths = PeFailoverSpec::Classes.files(catalogue).keys
      expect(paths.reject { |p| p.start_with?('/tmp/sb/') }).to eq([])
    end

    it 'starts, checks and stops the watcher through its pid file, and removes the unit' do
      is_expected.to contain_service('pe_failover-sb').with(
        ensure: 'running',
        provider: 'base',
        start: '/tmp/sb/opt/pe_failover/bin/pe_failover watch --config /tmp/sb/opt/pe_failover/etc/config.json ' \
               '--daemonize --pidfile /tmp/sb/run/watch.pid',
        status: alive,
        stop: "if #{alive}; then kill \"$pid\"; i=0; while kill -0 \"$pid\" 2>/dev/null && [ $i -lt 100 ]; " \
              'do sleep 0.1; i=$((i+1)); done; ! kill -0 "$pid" 2>/dev/null; fi',
      )
      is_expected.to contain_service('pe_failover-sb').without_enable
      is_expected.to contain_file('/tmp/sb/systemd/pe_failover-sb.service').with_ensure('absent')
      is_expected.not_to contain_exec('pe_failover-sb systemctl daemon-reload')
    end
  end

  describe 'the base provider commands, run by a real shell' do
    # The status and stop commands are shell code built in the manifest:
    # run them against real processes.
    let(:facts) { PeFailoverSpec::Classes.facts(on_supported_os['debian-11-x86_64']) }
    let(:params) { { service_provider: 'base', pidfile: pidfile } }
    let(:dir) { Dir.mktmpdir('pe_failover-svc') }
    let(:pidfile) { File.join(dir, 'watch.pid') }

    after { FileUtils.rm_rf(dir) }

    def run(cmd)
      system('/bin/sh', '-c', cmd, out: File::NULL, err: File::NULL)
    end

    it 'sees a live pe_failover process, not a dead or foreign pid, and stops it' do
      svc = catalogue.resource('Service', 'pe_failover')
      expect(run(svc[:status])).to be(false) # no pid file

      foreign = Process.spawn('sleep', '30')
      File.write(pidfile, foreign.to_s)
      expect(run(svc[:status])).to be(false) # alive, but not pe_failover
      expect(run(svc[:stop])).to be(true)
      expect(Process.kill(0, foreign)).to eq(1) # left alone
      Process.kill('TERM', foreign)
      Process.wait(foreign)

      watcher = Process.spawn(['sleep', 'pe_failover-watch'], '30') # argv[0] names it
      File.write(pidfile, watcher.to_s)
      sleep 0.2
      expect(run(svc[:status])).to be(true)
      Thread.new { Process.wait(watcher) } # reap it, so it does not linger as a zombie
      expect(run(svc[:stop])).to be(true)
      expect(run(svc[:status])).to be(false)
    end
  end

  context 'with manage_service => false' do
    let(:facts) { PeFailoverSpec::Classes.facts(on_supported_os['redhat-8-x86_64']) }
    let(:params) { { manage_service: false } }

    it { is_expected.to compile.with_all_deps }
    it { is_expected.not_to contain_service('pe_failover') }
    it { is_expected.not_to contain_file('/etc/systemd/system/pe_failover.service') }
  end

  context 'with manage_user => false' do
    let(:facts) { PeFailoverSpec::Classes.facts(on_supported_os['redhat-8-x86_64']) }
    let(:params) { { manage_user: false, transfer_group: 'xfer' } }

    it { is_expected.to compile.with_all_deps }
    it { is_expected.not_to contain_group('xfer') }
    it { is_expected.to contain_file('/opt/pe_failover/etc').with_group('xfer') }
  end

  describe 'the Ruby and lib directory of the command' do
    let(:facts) { on_supported_os['redhat-8-x86_64'] }

    context 'without the pe_failover fact or parameters' do
      it { is_expected.to compile.and_raise_error(%r{cannot tell which Ruby and lib directory run the pe_failover command}) }
    end

    context 'from parameters' do
      let(:params) { { ruby: '/usr/bin/ruby3.1', libdir: '/srv/modules/pe_failover/lib' } }

      it 'renders them into the wrapper' do
        is_expected.to contain_file('/opt/pe_failover/bin/pe_failover').with_content(
          %r{^exec /usr/bin/ruby3\.1 -I /srv/modules/pe_failover/lib /srv/modules/pe_failover/lib/puppet_x/pe_failover/cli\.rb "\$@"$},
        )
      end
    end

    context 'from a fact with a path a shell would split' do
      let(:facts) { on_supported_os['redhat-8-x86_64'].merge(pe_failover: { 'ruby' => '/usr/bin/ruby', 'libdir' => '/my modules/lib' }) }

      it { is_expected.to compile.and_raise_error(%r{cannot tell which Ruby and lib directory}) }
    end
  end

  describe 'parameter validation' do
    let(:facts) { PeFailoverSpec::Classes.facts(on_supported_os['debian-11-x86_64']) }

    {
      base_dir: 'opt/pe_failover',
      state_dir: 'state',
      facts_dir: './facts.d',
      unit_dir: '/etc/systemd/system/with space',
      authorized_keys_file: '/opt/x/"; touch /tmp/pwned; "',
      pidfile: 'run/x.pid',
      cron_file: '/etc/cron.d/$(id)',
    }.each do |param, value|
      context "#{param} => #{value.inspect}" do
        let(:params) { { param => value } }

        it { is_expected.to compile.and_raise_error(%r{parameter '#{param}' expects .*Pe_failover::Path}) }
      end
    end

    {
      cron_minute: '* ; rm -rf /',
      service_provider: 'sysvinit',
      ca_max_delete_share: 1.5,
      keep_snapshots: 0,
      nc_server: 'http://a.example.com:4433',
      transfer_user: 'Bad User',
    }.each do |param, value|
      context "#{param} => #{value.inspect}" do
        let(:params) { { param => value } }

        it { is_expected.to compile.and_raise_error(%r{parameter '#{param}'}) }
      end
    end
  end
end
