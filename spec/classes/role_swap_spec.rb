# frozen_string_literal: true

require 'spec_helper'
require_relative '../support/classes'

# A role change is the other class plus one Puppet run. Both catalogues of
# the same node are compiled here, and every file one role creates that the
# other does not need must be removed by the other: nothing stale (keys,
# authorized keys, known_hosts, cron, staging) survives a promotion or a
# demotion. What both roles share must be declared, with the same path, by
# both.
RSpec.describe 'a role change on one node', type: :host do
  let(:node) { 'a.example.com' }
  let(:facts) { PeFailoverSpec::Classes.facts(on_supported_os['redhat-8-x86_64']) }

  # The code compiled by load_catalogue(:host); set before each compile.
  def pre_condition
    @manifest
  end

  def compile_role(manifest)
    @manifest = manifest
    load_catalogue(:host)
  end

  ACTIVE = <<~PP
    class { 'pe_failover::active':
      passive_master     => ['b.example.com', 'c.example.com'],
      passive_host_key   => { 'b.example.com' => '#{PeFailoverSpec::Classes::HOST_KEY_B}' },
      trust_on_first_use => true,
      nc_hostnames       => {},
    }
  PP
  PASSIVE = "class { 'pe_failover::passive': auth_key => '#{PeFailoverSpec::Classes::TRANSFER_KEY}' }"

  # Paths a catalogue creates (file or directory).
  def created(catalogue)
    PeFailoverSpec::Classes.files(catalogue).select { |_, ensure_value| %w[file directory].include?(ensure_value) }.keys
  end

  # Whether the catalogue removes path: itself, or a directory above it
  # removed with force. `ignoring`: removals to pretend are missing.
  def removes?(catalogue, path, ignoring = [])
    catalogue.resources.any? do |r|
      next false unless r.type == 'File' && r[:ensure] == 'absent' && !ignoring.include?(r.title)

      r.title == path || (r[:force] && path.start_with?("#{r.title}/"))
    end
  end

  def other_role_leftovers(from, to, ignoring = [])
    (created(from) - created(to)).reject { |path| removes?(to, path, ignoring) }
  end

  it 'demotion: the passive catalogue removes everything only the active creates' do
    active = compile_role(ACTIVE)
    passive = compile_role(PASSIVE)
    only_active = created(active) - created(passive)
    expect(only_active).to include('/opt/pe_failover/ssh/id_ed25519', '/opt/pe_failover/ssh/known_hosts',
                                   '/opt/pe_failover/ssh/known_hosts.d/c.example.com', '/etc/cron.d/pe_failover')
    expect(other_role_leftovers(active, passive)).to eq([])
    types = passive.resources.map(&:type)
    expect(types).not_to include('Pe_failover_ca_replica', 'Pe_failover_node_group')
  end

  it 'promotion: the active catalogue removes everything only the passive creates' do
    passive = compile_role(PASSIVE)
    active = compile_role(ACTIVE)
    only_passive = created(passive) - created(active)
    expect(only_passive).to include('/opt/pe_failover/home/.ssh/authorized_keys', '/opt/pe_failover/state/incoming',
                                    '/opt/pe_failover/state/nc/incoming')
    expect(other_role_leftovers(passive, active)).to eq([])
  end

  it 'both roles rewrite the same configuration, facts file and service, and only the role changes' do
    active = compile_role(ACTIVE)
    passive = compile_role(PASSIVE)
    shared = %w[/opt/pe_failover/etc/config.json /opt/puppetlabs/facter/facts.d/pe_failover.yaml
                /etc/systemd/system/pe_failover.service /opt/pe_failover/bin/pe_failover]
    expect(created(active)).to include(*shared)
    expect(created(passive)).to include(*shared)
    expect(PeFailoverSpec::Classes.config(active)['role']).to eq('active')
    expect(PeFailoverSpec::Classes.config(passive)['role']).to eq('passive')
    # The running watcher is restarted with the new role.
    [active, passive].each do |cat|
      expect(Array(cat.resource('File', '/opt/pe_failover/etc/config.json')[:notify]).map(&:to_s)).to eq(['Service[pe_failover]'])
    end
    expect(active.resource('User', 'pe-transfer')[:shell]).to eq('/sbin/nologin')
    expect(passive.resource('User', 'pe-transfer')[:shell]).to eq('/bin/sh')
  end

  it 'the leftover check itself notices a file the other role forgets' do
    active = compile_role(ACTIVE)
    passive = compile_role(PASSIVE)
    expect(other_role_leftovers(active, passive, ['/opt/pe_failover/ssh/id_ed25519'])).to eq(['/opt/pe_failover/ssh/id_ed25519'])
    expect(other_role_leftovers(passive, active, ['/opt/pe_failover/state/incoming'])).to eq(['/opt/pe_failover/state/incoming'])
  end

  # Every supported OS, and the sandbox layout with the pid-file service
  # (no systemd): a swap either way leaves nothing of the other role.
  SANDBOX = <<~PP
    class { 'pe_failover':
      base_dir         => '/sb/opt/pe_failover',
      facts_dir        => '/sb/facts.d',
      unit_dir         => '/sb/systemd',
      cron_file        => '/sb/cron.d/pe_failover',
      pidfile          => '/sb/run/pe_failover.pid',
      service_provider => 'base',
    }
  PP

  on_supported_os.each do |os, os_facts|
    context "on #{os}" do
      let(:facts) { PeFailoverSpec::Classes.facts(os_facts) }

      [['', 'the default layout'], [SANDBOX, 'a sandbox with the base service provider']].each do |base, layout|
        it "swaps both ways without leftovers (#{layout})" do
          active = compile_role(base + ACTIVE)
          passive = compile_role(base + PASSIVE)
          expect(other_role_leftovers(active, passive)).to eq([])
          expect(other_role_leftovers(passive, active)).to eq([])
          expect(PeFailoverSpec::Classes.files(passive)).not_to include(a_string_starting_with('/opt/')) unless base.empty?
          [active, passive].each do |cat|
            expect(cat.resource('Service', 'pe_failover')[:provider].to_s).to eq(base.empty? ? 'systemd' : 'base')
            expect(PeFailoverSpec::Classes.files(cat)['/sb/systemd/pe_failover.service']).to eq('absent') unless base.empty?
          end
        end
      end
    end
  end
end
