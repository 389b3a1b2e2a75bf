# frozen_string_literal: true

require 'spec_helper'
require_relative '../support/classes'

RSpec.describe 'pe_failover::passive' do
  let(:node) { 'b.example.com' }
  let(:key) { PeFailoverSpec::Classes::TRANSFER_KEY }
  let(:params) { { auth_key: key } }
  let(:config_json) { PeFailoverSpec::Classes.config(catalogue) }
  let(:receiver) { 'command="/opt/pe_failover/bin/pe_failover receive --config /opt/pe_failover/etc/config.json"' }

  on_supported_os.each do |os, os_facts|
    context "on #{os}" do
      let(:facts) { PeFailoverSpec::Classes.facts(os_facts) }

      it { is_expected.to compile.with_all_deps }

      it 'gives the transfer user a real shell: sshd runs the forced command with <shell> -c' do
        is_expected.to contain_user('pe-transfer').with(
          ensure: 'present', system: true, gid: 'pe-transfer', home: '/opt/pe_failover/home',
          managehome: false, shell: '/bin/sh'
        )
      end

      it 'authorizes the active key for the receiver only' do
        is_expected.to contain_file('/opt/pe_failover/home/.ssh/authorized_keys')
          .with(ensure: 'file', owner: 'root', group: 'pe-transfer', mode: '0640', content: "restrict,#{receiver} #{key}\n")
      end

      {
        '/opt/pe_failover/ssh' => ['root', 'pe-transfer', '0750'],
        '/opt/pe_failover/home/.ssh' => ['root', 'pe-transfer', '0750'],
        '/opt/pe_failover/state/incoming' => ['pe-transfer', 'pe-transfer', '0700'],
        '/opt/pe_failover/state/nc' => ['root', 'pe-transfer', '0750'],
        '/opt/pe_failover/state/nc/incoming' => ['pe-transfer', 'pe-transfer', '0700'],
      }.each do |dir, (owner, group, mode)|
        it "creates #{dir} #{owner}:#{group} #{mode}" do
          is_expected.to contain_file(dir).with(ensure: 'directory', owner: owner, group: group, mode: mode)
        end
      end

      it 'writes the passive configuration, key by key' do
        expect(config_json.keys).to eq(%w[role certname state_dir ca replicas nc watch log])
        expect(config_json['role']).to eq('passive')
        expect(config_json['certname']).to eq('b.example.com')
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
        expect(config_json['replicas']).to eq([])
        expect(config_json['nc']).to eq(
          'enabled' => true,
          'cert' => '/etc/puppetlabs/puppet/ssl/certs/b.example.com.pem',
          'key' => '/etc/puppetlabs/puppet/ssl/private_keys/b.example.com.pem',
          'interval' => 60,
          'hostnames' => {},
          'max_delete_share' => 0.1,
          'replace' => false,
        )
        expect(config_json['watch']).to eq('debounce_ms' => 150, 'max_delay_ms' => 1000, 'verify_interval' => 300, 'retry_interval' => 5)
        expect(config_json['log']).to eq('syslog' => true)
      end

      it 'lets the receiver (transfer group) read the configuration, and restarts the watcher when it changes' do
        is_expected.to contain_file('/opt/pe_failover/etc/config.json')
          .with(owner: 'root', group: 'pe-transfer', mode: '0640')
          .that_notifies('Service[pe_failover]')
      end

      it 'writes the role fact' do
        is_expected.to contain_file('/opt/puppetlabs/facter/facts.d/pe_failover.yaml')
          .with(ensure: 'file', owner: 'root', group: 'root', mode: '0644', content: <<~YAML)
            # Managed by Puppet (pe_failover): this host's pe_failover role.
            pe_failover_mode: "passive"
          YAML
      end

      it 'removes what only an active has' do
        %w[/opt/pe_failover/ssh/id_ed25519 /opt/pe_failover/ssh/id_ed25519.pub
           /opt/pe_failover/ssh/known_hosts /etc/cron.d/pe_failover].each do |f|
          is_expected.to contain_file(f).with_ensure('absent')
        end
        is_expected.to contain_file('/opt/pe_failover/ssh/known_hosts.d').with(ensure: 'absent', force: true)
      end

      it 'neither generates keys, syncs, nor manages classifier groups' do
        types = catalogue.resources.map(&:type).uniq
        expect(types & %w[Exec Pe_failover_ca_replica Pe_failover_node_group]).to eq(['Exec']) # daemon-reload only
        expect(catalogue.resources.select { |r| r.type == 'Exec' }.map(&:title)).to eq(['pe_failover systemctl daemon-reload'])
      end
    end
  end

  context 'with allowed sources' do
    let(:facts) { PeFailoverSpec::Classes.facts(on_supported_os['redhat-8-x86_64']) }
    let(:params) { super().merge(allowed_sources: ['192.0.2.10', '2001:db8::/64', '*.dc1.example.com', '!10.0.0.1']) }

    it 'restricts the key to them' do
      is_expected.to contain_file('/opt/pe_failover/home/.ssh/authorized_keys').with_content(
        "restrict,#{receiver},from=\"192.0.2.10,2001:db8::/64,*.dc1.example.com,!10.0.0.1\" #{key}\n",
      )
    end
  end

  context 'with a key pasted with surrounding white space and no comment' do
    let(:facts) { PeFailoverSpec::Classes.facts(on_supported_os['redhat-8-x86_64']) }
    let(:params) { { auth_key: "\n  #{PeFailoverSpec::Classes::HOST_KEY_C}\n\n" } }

    it 'writes the key alone' do
      is_expected.to contain_file('/opt/pe_failover/home/.ssh/authorized_keys')
        .with_content("restrict,#{receiver} #{PeFailoverSpec::Classes::HOST_KEY_C}\n")
    end
  end

  context 'with the authorized_keys file elsewhere and sandboxed paths' do
    let(:facts) { PeFailoverSpec::Classes.facts(on_supported_os['debian-11-x86_64']) }
    let(:pre_condition) do
      <<~PP
        class { 'pe_failover':
          base_dir             => '/srv/sb/pe_failover',
          state_dir            => '/srv/sb/state',
          authorized_keys_file => '/srv/sb/pe_failover/ssh/authorized_keys',
          facts_dir            => '/srv/sb/facts.d',
          cron_file            => '/srv/sb/cron.d/pe_failover',
          unit_dir             => '/srv/sb/systemd',
          transfer_user        => 'xfer',
          transfer_group       => 'xfergrp',
        }
      PP
    end

    it { is_expected.to compile.with_all_deps }

    it 'uses them everywhere' do
      is_expected.to contain_file('/srv/sb/pe_failover/ssh/authorized_keys').with(
        owner: 'root', group: 'xfergrp', mode: '0640',
        content: "restrict,command=\"/srv/sb/pe_failover/bin/pe_failover receive --config /srv/sb/pe_failover/etc/config.json\" #{key}\n"
      )
      is_expected.to contain_file('/srv/sb/state/incoming').with(owner: 'xfer', group: 'xfergrp', mode: '0700')
      is_expected.to contain_file('/srv/sb/state/nc').with(owner: 'root', group: 'xfergrp', mode: '0750')
      is_expected.to contain_file('/srv/sb/state/nc/incoming').with(owner: 'xfer', group: 'xfergrp', mode: '0700')
      is_expected.to contain_user('xfer').with(gid: 'xfergrp', home: '/srv/sb/pe_failover/home')
      expect(config_json('/srv/sb/pe_failover/etc/config.json')['state_dir']).to eq('/srv/sb/state')
      paths = PeFailoverSpec::Classes.files(catalogue).keys
      expect(paths.reject { |p| p.start_with?('/srv/sb/') }).to eq([])
    end

    def config_json(path)
      PeFailoverSpec::Classes.config(catalogue, path)
    end
  end

  describe 'parameter validation' do
    let(:facts) { PeFailoverSpec::Classes.facts(on_supported_os['debian-11-x86_64']) }

    [
      'AAAAC3NzaC1lZDI1NTE5AAAAIDA4tlMBKkZjpzsHMsTKSGLotlVAVFV0Z/emA9Gou1Sk', # no type
      'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDA4tlMBKkZjpzsHMsTKSGLotlVAVFV0Z/emA9Gou1S', # one character short
      'ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQC1b1pwI6ZoQAcCS692jztgtdNfRj2ci+hiPf2iXD5btoQpztY8deDZLnBmYIBgCf6YUyasuve0Igug6ZxWBIvXu+',
      'command="/bin/sh" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDA4tlMBKkZjpzsHMsTKSGLotlVAVFV0Z/emA9Gou1Sk', # options
      # A second line would be a second, unrestricted key.
      "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDA4tlMBKkZjpzsHMsTKSGLotlVAVFV0Z/emA9Gou1Sk x\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOTEaZGiwxmzYYkRWGET38stUxqm8hGgSZ8xFlGKkOw5",
      "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDA4tlMBKkZjpzsHMsTKSGLotlVAVFV0Z/emA9Gou1Sk\tcomment",
    ].each do |bad|
      context "with auth_key => #{bad.inspect}" do
        let(:params) { { auth_key: bad } }

        it { is_expected.to compile.and_raise_error(%r{auth_key is not an ed25519 public key\. Expected one line 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI}) }
      end
    end

    context 'with a private key by mistake' do
      let(:secret) { 'b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW' }
      let(:params) { { auth_key: "-----BEGIN OPENSSH PRIVATE KEY-----\n#{secret}\n-----END OPENSSH PRIVATE KEY-----\n" } }

      it 'fails without repeating it' do
        is_expected.to compile.and_raise_error(%r{auth_key holds a private key\. Pass the public key instead: the contents of /opt/pe_failover/ssh/id_ed25519\.pub})
        expect { catalogue }.to raise_error(Puppet::Error) { |e| expect(e.message).not_to include(secret) }
      end
    end

    ['10.0.0.1,10.0.0.2', '"host"', 'host name', ''].each do |bad|
      context "with allowed_sources => [#{bad.inspect}]" do
        let(:params) { { auth_key: key, allowed_sources: [bad] } }

        it { is_expected.to compile.and_raise_error(%r{parameter 'allowed_sources' index 0 expects .*Pe_failover::Sshsource}) }
      end
    end

    context 'with a relative authorized_keys_file' do
      let(:pre_condition) { "class { 'pe_failover': authorized_keys_file => '.ssh/authorized_keys' }" }

      it { is_expected.to compile.and_raise_error(%r{parameter 'authorized_keys_file' expects .*Pe_failover::Path}) }
    end

    context 'together with pe_failover::active' do
      let(:pre_condition) do
        "class { 'pe_failover::active': passive_master => 'c.example.com', passive_host_key => '#{PeFailoverSpec::Classes::HOST_KEY_C}' }"
      end

      it { is_expected.to compile.and_raise_error(%r{this host also has pe_failover::active; a host is either active or passive}) }
    end
  end
end
