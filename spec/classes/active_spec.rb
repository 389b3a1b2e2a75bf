# frozen_string_literal: true

require 'spec_helper'
require_relative '../support/classes'

RSpec.describe 'pe_failover::active' do
  let(:node) { 'a.example.com' }
  let(:host_key_b) { PeFailoverSpec::Classes::HOST_KEY_B }
  let(:host_key_c) { PeFailoverSpec::Classes::HOST_KEY_C }
  let(:params) { { passive_master: 'b.example.com', passive_host_key: host_key_b } }
  let(:config_json) { PeFailoverSpec::Classes.config(catalogue) }

  on_supported_os.each do |os, os_facts|
    context "on #{os}" do
      let(:facts) { PeFailoverSpec::Classes.facts(os_facts) }

      it { is_expected.to compile.with_all_deps }

      it 'creates the transfer user with a nologin shell: nobody logs in as it on the active' do
        is_expected.to contain_user('pe-transfer').with(
          ensure: 'present', system: true, gid: 'pe-transfer', home: '/opt/pe_failover/home',
          managehome: false, shell: PeFailoverSpec::Classes::NOLOGIN.fetch(os_facts[:os]['family'])
        ).that_requires('Group[pe-transfer]')
      end

      it 'keeps its SSH material in a root-only directory' do
        is_expected.to contain_file('/opt/pe_failover/ssh').with(ensure: 'directory', owner: 'root', group: 'root', mode: '0700')
      end

      it 'generates the ed25519 transfer key once' do
        is_expected.to contain_exec('pe_failover transfer key').with(
          command: "ssh-keygen -q -t ed25519 -N '' -C pe_failover@a.example.com -f /opt/pe_failover/ssh/id_ed25519",
          creates: '/opt/pe_failover/ssh/id_ed25519',
          umask: '0077',
        ).that_requires('File[/opt/pe_failover/ssh]')
        is_expected.to contain_file('/opt/pe_failover/ssh/id_ed25519')
          .with(ensure: 'file', owner: 'root', group: 'root', mode: '0600').without_content
          .that_requires('Exec[pe_failover transfer key]')
        is_expected.to contain_file('/opt/pe_failover/ssh/id_ed25519.pub')
          .with(ensure: 'file', mode: '0644').that_requires('Exec[pe_failover transfer key]')
      end

      it 'pins the passive host key in known_hosts, and trusts nothing on first use' do
        is_expected.to contain_file('/opt/pe_failover/ssh/known_hosts')
          .with(ensure: 'file', owner: 'root', group: 'root', mode: '0644', content: "b.example.com #{host_key_b}\n")
        is_expected.to contain_file('/opt/pe_failover/ssh/known_hosts.d').with(ensure: 'absent', force: true)
        expect(catalogue.resources.map(&:ref).grep(%r{pin-host-key})).to eq([])
      end

      it 'writes the active configuration, key by key' do
        expect(config_json.keys).to eq(%w[role certname state_dir ca replicas nc watch log])
        expect(config_json['role']).to eq('active')
        expect(config_json['certname']).to eq('a.example.com')
        expect(config_json['state_dir']).to eq('/opt/pe_failover/state')
        expect(config_json['ca']).to eq(
          'ssldir' => '/etc/puppetlabs/puppet/ssl',
          'exclude' => [],
          'owner' => 'pe-puppet',
          'group' => 'pe-puppet',
          'reload_command' => ['systemctl', 'reload', 'pe-puppetserver'],
          'max_delete_share' => 0.1,
          'keep_snapshots' => 10,
        )
        expect(config_json['replicas']).to eq([{
                                           'host' => 'b.example.com',
                                           'port' => 22,
                                           'user' => 'pe-transfer',
                                           'identity_file' => '/opt/pe_failover/ssh/id_ed25519',
                                           'known_hosts' => '/opt/pe_failover/ssh/known_hosts',
                                           'connect_timeout' => 10,
                                           'io_timeout' => 30,
                                         }])
        expect(config_json['nc']).to eq(
          'enabled' => true,
          'cert' => '/etc/puppetlabs/puppet/ssl/certs/a.example.com.pem',
          'key' => '/etc/puppetlabs/puppet/ssl/private_keys/a.example.com.pem',
          'interval' => 60,
          'hostnames' => { 'a.example.com' => 'b.example.com' },
          'max_delete_share' => 0.1,
          'replace' => false,
        )
        expect(config_json['watch']).to eq('debounce_ms' => 150, 'max_delay_ms' => 1000, 'verify_interval' => 300, 'retry_interval' => 5)
        expect(config_json['log']).to eq('syslog' => true)
      end

      it 'protects the configuration and restarts the watcher when it changes' do
        is_expected.to contain_file('/opt/pe_failover/etc/config.json')
          .with(ensure: 'file', owner: 'root', group: 'pe-transfer', mode: '0640')
          .that_notifies('Service[pe_failover]')
      end

      it 'writes the role facts under the names of the original module' do
        is_expected.to contain_file('/opt/puppetlabs/facter/facts.d/pe_failover.yaml')
          .with(ensure: 'file', owner: 'root', group: 'root', mode: '0644', content: <<~YAML)
            # Managed by Puppet (pe_failover): this host's pe_failover role.
            pe_failover_mode: "active"
            pe_failover_passive_master: "b.example.com"
          YAML
      end

      it 'installs the fallback cron entry' do
        is_expected.to contain_file('/etc/cron.d/pe_failover')
          .with(ensure: 'file', owner: 'root', group: 'root', mode: '0644', content: <<~CRON)
            # Managed by Puppet (pe_failover): fallback verify of the replicas, in case
            # the watcher missed an event or is not running.
            SHELL=/bin/sh
            PATH=/usr/sbin:/usr/bin:/sbin:/bin
            */15 * * * * root /opt/pe_failover/bin/pe_failover sync --config /opt/pe_failover/etc/config.json
          CRON
          .that_requires(['File[/opt/pe_failover/bin/pe_failover]', 'File[/opt/pe_failover/etc/config.json]'])
      end

      it 'syncs the CA to the passive on each run, once key, host key and configuration are in place' do
        is_expected.to contain_pe_failover_ca_replica('b.example.com')
          .with(config: '/opt/pe_failover/etc/config.json')
          .that_requires(['File[/opt/pe_failover/etc/config.json]', 'File[/opt/pe_failover/bin/pe_failover]',
                          'File[/opt/pe_failover/ssh/id_ed25519]', 'File[/opt/pe_failover/ssh/known_hosts]'])
      end

      it 'manages the three classification groups' do
        is_expected.to contain_pe_failover_node_group('pe_failover').with(
          ensure: 'present', parent: 'All Nodes', environment: 'production',
          rule: ['and', ['~', ['fact', 'pe_failover_mode'], '^(active|passive)$']],
          classes: {}, variables: {}
        )
        is_expected.to contain_pe_failover_node_group('pe_failover-active').with(
          ensure: 'present', parent: 'pe_failover', environment: 'production',
          rule: ['and', ['=', ['fact', 'pe_failover_mode'], 'active']],
          classes: {}, variables: {}
        ).that_requires('Pe_failover_node_group[pe_failover]')
        is_expected.to contain_pe_failover_node_group('pe_failover-passive').with(
          ensure: 'present', parent: 'pe_failover', environment: 'production',
          rule: ['and', ['=', ['fact', 'pe_failover_mode'], 'passive']],
          classes: {}, variables: {}
        ).that_requires('Pe_failover_node_group[pe_failover]')
      end

      it 'removes what only a passive has' do
        is_expected.to contain_file('/opt/pe_failover/home/.ssh/authorized_keys').with_ensure('absent')
        is_expected.to contain_file('/opt/pe_failover/home/.ssh').with(ensure: 'absent', force: true)
        is_expected.to contain_file('/opt/pe_failover/state/incoming').with(ensure: 'absent', force: true)
        is_expected.to contain_file('/opt/pe_failover/state/nc/incoming').with(ensure: 'absent', force: true)
      end
    end
  end

  context 'with the watcher service managed' do
    let(:facts) { PeFailoverSpec::Classes.facts(on_supported_os['redhat-8-x86_64']) }
    let(:params) { { passive_master: 'b.example.com', passive_host_key: PeFailoverSpec::Classes::HOST_KEY_B } }

    it 'starts it only once the transfer key and the pinned host keys exist' do
      is_expected.to contain_service('pe_failover')
        .that_requires(['Exec[pe_failover transfer key]', 'File[/opt/pe_failover/ssh/id_ed25519]', 'File[/opt/pe_failover/ssh/known_hosts]'])
    end
  end

  context 'with the classifier settings of the class pe_failover' do
    let(:facts) { PeFailoverSpec::Classes.facts(on_supported_os['redhat-8-x86_64']) }
    let(:pre_condition) do
      "class { 'pe_failover': ssldir => '/sb/ssl', nc_server => 'https://127.0.0.1:4433', nc_cacert => '/sb/ca.pem' }"
    end
    let(:params) { { passive_master: 'b.example.com', passive_host_key: PeFailoverSpec::Classes::HOST_KEY_B } }

    it 'manages its groups on the classifier the command talks to, with the same identity' do
      %w[pe_failover pe_failover-active pe_failover-passive].each do |group|
        is_expected.to contain_pe_failover_node_group(group).with(
          server: 'https://127.0.0.1:4433', cert: '/sb/ssl/certs/a.example.com.pem',
          key: '/sb/ssl/private_keys/a.example.com.pem', cacert: '/sb/ca.pem',
        )
      end
      nc = PeFailoverSpec::Classes.config(catalogue)['nc']
      expect(nc).to include('server' => 'https://127.0.0.1:4433', 'cert' => '/sb/ssl/certs/a.example.com.pem', 'cacert' => '/sb/ca.pem')
    end
  end

  context 'with the default classifier' do
    let(:facts) { PeFailoverSpec::Classes.facts(on_supported_os['redhat-8-x86_64']) }
    let(:params) { { passive_master: 'b.example.com', passive_host_key: PeFailoverSpec::Classes::HOST_KEY_B } }

    it "uses this host's certname and Puppet ssl files" do
      is_expected.to contain_pe_failover_node_group('pe_failover').with(
        server: 'https://a.example.com:4433', cert: '/etc/puppetlabs/puppet/ssl/certs/a.example.com.pem',
        cacert: '/etc/puppetlabs/puppet/ssl/certs/ca.pem',
      )
    end
  end

  context 'with the passive on another SSH port' do
    let(:facts) { PeFailoverSpec::Classes.facts(on_supported_os['redhat-8-x86_64']) }
    let(:params) { super().merge(ssh_port: 2222) }

    it 'pins the key as [host]:port and ships to that port' do
      is_expected.to contain_file('/opt/pe_failover/ssh/known_hosts').with_content("[b.example.com]:2222 #{host_key_b}\n")
      expect(config_json['replicas'].map { |r| r['port'] }).to eq([2222])
    end
  end

  context 'with a host key given with a comment and surrounding white space' do
    let(:facts) { PeFailoverSpec::Classes.facts(on_supported_os['redhat-8-x86_64']) }
    let(:params) { super().merge(passive_host_key: "  #{host_key_b} root@b\n") }

    it 'pins type and key only' do
      is_expected.to contain_file('/opt/pe_failover/ssh/known_hosts').with_content("b.example.com #{host_key_b}\n")
    end
  end

  {
    'ecdsa' => 'ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBMx9URhfEkmyhAFSzyiqlO2rL6NW69E328J/voLBSsaJyUZh' \
               'AZM2myv2OEX/kMNzSxrgteEGCq5/iS2yinpQ7N9Un5Us4rma2UT4RhpDMU5ZFZrrL5sDuNg56D929sKNjA==',
    'rsa' => 'ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQC1b1pwI6ZoQAcCS692jztgtdNfRj2ci+hiPf2iXD5btoQpztY8deDZLnBmYIBgCf6YUyasuve0Igug6ZxWBIvXu+' \
             'iuio08Ya/+gaxJoOXH2e0VCIbzycVHaSaJYaP5NtQN2IzNNEb3xo4N2WNzdfn9pOCdlZXNr1I4C4pghzgbD/FOheiT8h8XPKw/jFo3tNEWuQRG+VrycVwKzL81MZkB' \
             'KdSGYyG811Um5y1ei33YGk82Tlk7+Nmx6NnOl72tKXn2qQBjPFWiJjgUKoId34ylkAka4+UfPzRgWqL2k5CFSTOt+tJtZAlvP7H1yF4ivDzlfHRTYZaq4l1XGF+fVBan' \
             'd2cwaywt8gvH/KKN2w7HoOAX8BEDanoF9WY9El65lgMNv87+0ZOwkPFfO1er+rl84fQTT/coDhTQk7/oLg+uUiW/VMBC7ppzTfVyKY/3S4qm8i1b39K40abWvqAnUx' \
             '5/sE2eA85DZSNRSJD4nKQJuznRUqjYodRtTVetU+Lk/e8=',
  }.each do |type, key|
    context "with an #{type} host key" do
      let(:facts) { PeFailoverSpec::Classes.facts(on_supported_os['redhat-8-x86_64']) }
      let(:params) { super().merge(passive_host_key: "#{key} root@b") }

      it { is_expected.to contain_file('/opt/pe_failover/ssh/known_hosts').with_content("b.example.com #{key}\n") }
    end
  end

  context 'with trust_on_first_use and no host key' do
    let(:facts) { PeFailoverSpec::Classes.facts(on_supported_os['debian-11-x86_64']) }
    let(:params) { { passive_master: 'b.example.com', trust_on_first_use: true, ssh_port: 2200 } }

    it { is_expected.to compile.with_all_deps }

    it 'records the key at the first connection, once, into its own file' do
      is_expected.to contain_file('/opt/pe_failover/ssh/known_hosts.d')
        .with(ensure: 'directory', owner: 'root', group: 'root', mode: '0700', recurse: true, purge: true, force: true)
      is_expected.to contain_exec('pe_failover pin-host-key b.example.com').with(
        command: '/opt/pe_failover/bin/pe_failover pin-host-key --host b.example.com --port 2200 ' \
                 '--known-hosts /opt/pe_failover/ssh/known_hosts.d/b.example.com',
        creates: '/opt/pe_failover/ssh/known_hosts.d/b.example.com',
        logoutput: true,
      ).that_requires(['File[/opt/pe_failover/ssh/known_hosts.d]', 'File[/opt/pe_failover/bin/pe_failover]'])
      is_expected.to contain_file('/opt/pe_failover/ssh/known_hosts.d/b.example.com')
        .with(ensure: 'file', mode: '0644').without_content
        .that_requires('Exec[pe_failover pin-host-key b.example.com]')
      is_expected.to contain_file('/opt/pe_failover/ssh/known_hosts').with_ensure('absent')
    end

    it 'points the replica at that file' do
      expect(config_json['replicas'].first['known_hosts']).to eq('/opt/pe_failover/ssh/known_hosts.d/b.example.com')
      is_expected.to contain_pe_failover_ca_replica('b.example.com')
        .that_requires('File[/opt/pe_failover/ssh/known_hosts.d/b.example.com]')
    end
  end

  context 'with two passives, one pinned and one trusted on first use' do
    let(:facts) { PeFailoverSpec::Classes.facts(on_supported_os['redhat-8-x86_64']) }
    let(:params) do
      {
        passive_master: ['b.example.com', 'c.example.com'],
        passive_host_key: { 'c.example.com' => host_key_c },
        trust_on_first_use: true,
        nc_hostnames: { 'a.example.com' => 'puppet.example.com' },
      }
    end

    it { is_expected.to compile.with_all_deps }

    it 'ships to both, each checked against its own known_hosts' do
      expect(config_json['replicas'].map { |r| [r['host'], r['known_hosts']] }).to eq(
        [['b.example.com', '/opt/pe_failover/ssh/known_hosts.d/b.example.com'],
         ['c.example.com', '/opt/pe_failover/ssh/known_hosts']],
      )
      is_expected.to contain_file('/opt/pe_failover/ssh/known_hosts').with_content("c.example.com #{host_key_c}\n")
      is_expected.to contain_exec('pe_failover pin-host-key b.example.com')
      is_expected.not_to contain_exec('pe_failover pin-host-key c.example.com')
      is_expected.to contain_pe_failover_ca_replica('b.example.com')
      is_expected.to contain_pe_failover_ca_replica('c.example.com')
    end

    it 'uses the explicit host name map and names the first passive in the facts' do
      expect(config_json['nc']['hostnames']).to eq('a.example.com' => 'puppet.example.com')
      is_expected.to contain_file('/opt/puppetlabs/facter/facts.d/pe_failover.yaml')
        .with_content(%r{^pe_failover_passive_master: "b\.example\.com"$})
    end
  end

  context 'with two pinned passives and no host name map' do
    let(:facts) { PeFailoverSpec::Classes.facts(on_supported_os['redhat-8-x86_64']) }
    let(:params) do
      { passive_master: ['b.example.com', 'c.example.com'],
        passive_host_key: { 'b.example.com' => host_key_b, 'c.example.com' => host_key_c } }
    end

    it { is_expected.to compile.and_raise_error(%r{with several passives \(b\.example\.com, c\.example\.com\) give nc_hostnames explicitly}) }

    context 'and an empty map (groups use a shared name)' do
      let(:params) { super().merge(nc_hostnames: {}) }

      it 'rewrites nothing' do
        expect(config_json['nc']['hostnames']).to eq({})
        is_expected.to contain_file('/opt/pe_failover/ssh/known_hosts')
          .with_content("b.example.com #{host_key_b}\nc.example.com #{host_key_c}\n")
      end
    end

    context 'and classifier replication disabled' do
      let(:pre_condition) { "class { 'pe_failover': nc_enabled => false }" }

      it 'needs no map' do
        expect(config_json['nc']).to include('enabled' => false, 'hostnames' => {})
      end
    end
  end

  context 'with the optional features off' do
    let(:facts) { PeFailoverSpec::Classes.facts(on_supported_os['redhat-8-x86_64']) }
    let(:params) { super().merge(sync_on_run: false, manage_node_groups: false) }
    let(:pre_condition) { "class { 'pe_failover': manage_cron => false, manage_service => false }" }

    it { is_expected.to compile.with_all_deps }

    it 'declares none of them' do
      expect(catalogue.resources.map(&:type).uniq & %w[Pe_failover_ca_replica Pe_failover_node_group Service]).to eq([])
      is_expected.not_to contain_file('/etc/cron.d/pe_failover')
    end
  end

  context 'with group classes and settings from the class pe_failover' do
    let(:facts) { PeFailoverSpec::Classes.facts(on_supported_os['redhat-8-x86_64']) }
    let(:params) do
      super().merge(
        node_group_environment: 'agent-specified',
        active_group_classes: { 'pe_failover::active' => { 'passive_master' => 'b.example.com' } },
        passive_group_classes: { 'pe_failover::passive' => {} },
        connect_timeout: 3, io_timeout: 7
      )
    end
    let(:pre_condition) do
      <<~PP
        class { 'pe_failover':
          cadir               => '/etc/puppetlabs/puppetserver/ca',
          ca_exclude          => ['requests/**'],
          reload_command      => ['true'],
          ca_max_delete_share => 0,
          keep_snapshots      => 3,
          nc_server           => 'https://a.example.com:4433',
          nc_cacert           => '/etc/ssl/ca.pem',
          nc_interval         => 30,
          nc_replace          => true,
          log_stderr          => true,
          cron_minute         => '7',
          cron_hour           => '*/2',
        }
      PP
    end

    it 'passes them on' do
      is_expected.to contain_pe_failover_node_group('pe_failover-active')
        .with(environment: 'agent-specified', classes: { 'pe_failover::active' => { 'passive_master' => 'b.example.com' } })
      is_expected.to contain_pe_failover_node_group('pe_failover-passive').with_classes('pe_failover::passive' => {})
      expect(config_json['ca']).to include('cadir' => '/etc/puppetlabs/puppetserver/ca', 'exclude' => ['requests/**'],
                                      'reload_command' => ['true'], 'max_delete_share' => 0, 'keep_snapshots' => 3)
      expect(config_json['nc']).to include('server' => 'https://a.example.com:4433', 'cacert' => '/etc/ssl/ca.pem',
                                      'interval' => 30, 'replace' => true)
      expect(config_json['log']).to eq('syslog' => true, 'stderr' => true)
      expect(config_json['replicas'].first).to include('connect_timeout' => 3, 'io_timeout' => 7)
      is_expected.to contain_file('/etc/cron.d/pe_failover')
        .with_content(%r{^7 \*/2 \* \* \* root /opt/pe_failover/bin/pe_failover sync --config /opt/pe_failover/etc/config\.json$})
    end
  end

  describe 'parameter validation' do
    let(:facts) { PeFailoverSpec::Classes.facts(on_supported_os['debian-11-x86_64']) }

    context 'without a host key nor trust_on_first_use' do
      let(:params) { { passive_master: 'b.example.com' } }

      it 'fails and explains both ways and how to read the key' do
        is_expected.to compile.and_raise_error(
          Regexp.new([
            Regexp.escape('no SSH host key for b.example.com. Either pin it: run `ssh-keyscan -t ed25519 -p 22 b.example.com`'),
            Regexp.escape('`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` run on b.example.com'),
            Regexp.escape("pass the key ('ssh-ed25519 AAAA...') as passive_host_key; or set trust_on_first_use => true"),
          ].join('.*')),
        )
      end
    end

    context 'with two passives and a key for only one, without trust_on_first_use' do
      let(:params) do
        { passive_master: ['b.example.com', 'c.example.com'], passive_host_key: { 'b.example.com' => host_key_b }, nc_hostnames: {} }
      end

      it { is_expected.to compile.and_raise_error(%r{no SSH host key for c\.example\.com\.}) }
    end

    ['not a host', 'https://b.example.com', 'b.example.com:22', '', []].each do |bad|
      context "with passive_master => #{bad.inspect}" do
        let(:params) { { passive_master: bad, trust_on_first_use: true } }

        it { is_expected.to compile.and_raise_error(%r{parameter 'passive_master'}) }
      end
    end

    context 'with a passive listed twice' do
      let(:params) { { passive_master: ['b.example.com', 'b.example.com'], trust_on_first_use: true } }

      it { is_expected.to compile.and_raise_error(%r{passive_master lists a host twice}) }
    end

    context 'with this host as its own passive' do
      let(:params) { { passive_master: 'a.example.com', trust_on_first_use: true } }

      it { is_expected.to compile.and_raise_error(%r{passive_master must name other hosts, not this one \(a\.example\.com\)}) }
    end

    context 'with one key string for two passives' do
      let(:params) { { passive_master: ['b.example.com', 'c.example.com'], passive_host_key: host_key_b, nc_hostnames: {} } }

      it { is_expected.to compile.and_raise_error(%r{passive_host_key is one key but passive_master names 2 hosts}) }
    end

    context 'with a key for a host that is not a passive' do
      let(:params) { { passive_master: 'b.example.com', passive_host_key: { 'd.example.com' => host_key_b } } }

      it { is_expected.to compile.and_raise_error(%r{passive_host_key has a key for d\.example\.com, which is not in passive_master}) }
    end

    ['AAAAC3NzaC1lZDI1NTE5AAAAIOTEaZGiwxmzYYkRWGET38stUxqm8hGgSZ8xFlGKkOw5',
     'b.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOTEaZGiwxmzYYkRWGET38stUxqm8hGgSZ8xFlGKkOw5',
     'ssh-dss AAAAB3NzaC1kc3MAAACBAP',
     'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOTEaZGiwxmzYYkRWGET38stUxqm8hGgSZ8xFlGKkOw', # one character short
     "#{PeFailoverSpec::Classes::HOST_KEY_B}\nb.example.com #{PeFailoverSpec::Classes::HOST_KEY_C}",
     'ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC0ufoCNUScmz+VatB3vSvV', # truncated
     "ssh-ed25519 AAAA\nb.example.com ssh-ed25519 AAAA"].each do |bad|
      context "with passive_host_key => #{bad.inspect}" do
        let(:params) { { passive_master: 'b.example.com', passive_host_key: bad } }

        it { is_expected.to compile.and_raise_error(%r{the passive_host_key of b\.example\.com is not an SSH public key}) }
      end
    end

    context 'with a host name map that rewrites a name into itself' do
      let(:params) { super().merge(nc_hostnames: { 'a.example.com' => 'a.example.com' }) }

      it { is_expected.to compile.and_raise_error(%r{nc_hostnames rewrites a\.example\.com into itself}) }
    end

    {
      ssh_port: 0,
      connect_timeout: 0,
      io_timeout: -1,
      node_group_environment: '',
      trust_on_first_use: 'yes',
      nc_hostnames: { 'a.example.com' => 'not a host' },
      active_group_classes: { 'role::x' => 'not a hash' },
    }.each do |param, value|
      context "with #{param} => #{value.inspect}" do
        let(:params) { { passive_master: 'b.example.com', passive_host_key: PeFailoverSpec::Classes::HOST_KEY_B, param => value } }

        it { is_expected.to compile.and_raise_error(%r{parameter '#{param}'}) }
      end
    end

    context 'with a relative base_dir' do
      let(:pre_condition) { "class { 'pe_failover': base_dir => 'opt/pe_failover' }" }

      it { is_expected.to compile.and_raise_error(%r{parameter 'base_dir' expects a match for Pe_failover::Path}) }
    end

    context 'together with pe_failover::passive' do
      let(:pre_condition) { "class { 'pe_failover::passive': auth_key => '#{PeFailoverSpec::Classes::TRANSFER_KEY}' }" }

      it { is_expected.to compile.and_raise_error(%r{this host also has pe_failover::passive; a host is either active or passive}) }
    end
  end
end
