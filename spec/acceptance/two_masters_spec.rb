# frozen_string_literal: true

# Two primaries in a sandbox on this machine (spec/support/sandbox.rb): the
# module tarball is built and installed with `puppet module install`, then
# `puppet apply` sets up master A as active and master B as passive, every
# path, user and service pointing into the sandbox, and a second apply of
# each must change nothing. A's transfer key reaches B's sshd only as the
# forced receiver command. Promotion of B and demotion of A (the face, then
# the swapped classes), and the failback, leave nothing stale and are
# idempotent too. Replication itself (sign, revoke and clean on A, B's ssl
# dir following, watch --once, status, fencing both ways) runs when the
# native runner is in the module (it is pending otherwise), and so does
# classifier replication (A's groups, host names rewritten, reach B's
# classifier emulator through sync and apply).
# Finally the host outside the sandbox is what it was: no user, group,
# cron entry, unit or default path was created.
#
# Needs root (sshd, files owned by root), OpenSSH and a built extension
# (`rake build` runs `rake compile`).

require 'json'
require 'open3'
require 'tmpdir'
require_relative '../support/sandbox'

ROOT = File.expand_path('../..', __dir__) unless defined?(ROOT)

RSpec.describe 'two primaries in a sandbox', :acceptance, order: :defined do
  metadata = JSON.parse(File.read(File.join(ROOT, 'metadata.json')))
  # PE_FAILOVER_TARBALL: use an already built tarball instead of `rake build`.
  prebuilt = ENV.fetch('PE_FAILOVER_TARBALL', nil)
  tarball = prebuilt || File.join(ROOT, 'pkg', "#{metadata['name']}-#{metadata['version']}.tar.gz")

  before(:all) do
    skip 'needs root (sshd, files owned by root)' unless Process.uid.zero?
    skip 'needs OpenSSH (apt-get install openssh-server openssh-client)' unless File.executable?('/usr/sbin/sshd')

    @host_before = PeFailoverSpec::Sandbox.host_state
    unless prebuilt
      out, status = Open3.capture2e('rake', 'build', chdir: ROOT)
      raise "rake build failed:\n#{out}" unless status.success?
    end

    @sb = PeFailoverSpec::Sandbox.new(root: Dir.mktmpdir('pe_failover-two-masters'))
    @sb.install_module(tarball)
    @sb.make_ca(certs: 3) # 2048-bit: rustls refuses a 1024-bit RSA CA
    @sb.start_sshd(@sb.b)
    @sb.start_sshd(@sb.a) # for the time A is the passive
    @sb.start_classifiers
    # Every example drives the native runner (sync, receive, apply, watch)
    # through the installed module: without it they must fail, not be skipped.
    raise "the installed module's native extension has no replication runner (run `make compile` first)" unless @sb.runner?
  end

  after(:all) { @sb&.cleanup }

  let(:sb) { @sb }
  let(:a) { @sb.a }
  let(:b) { @sb.b }

  def apply!(master, manifest, expect_code)
    code, out, = sb.apply(master, manifest)
    expect(code).to eq(expect_code), "puppet apply on #{master.name} exited #{code}, expected #{expect_code}:\n#{out}"
    out
  end

  def role_of(master)
    [JSON.parse(File.read(master.config))['role'], File.read(master.facts_file)[%r{pe_failover_mode: "(\w+)"}, 1]]
  end

  # What belongs to only one role on disk.
  def active_only(m) = [m.public_key, m.cron_file, m.path('opt', 'pe_failover', 'ssh', 'id_ed25519')]
  def passive_only(m) = [m.authorized_keys, m.path('opt', 'pe_failover', 'state', 'incoming')]

  it 'sets up A as active and B as passive with puppet apply; a second apply of each changes nothing' do
    out = apply!(a, sb.active_manifest, 2)
    expect(out).to include('pe_failover transfer key]/returns: executed successfully')
    expect(File.read(a.public_key)).to start_with('ssh-ed25519 ')
    expect(File.read(a.path('opt', 'pe_failover', 'ssh', 'known_hosts')))
      .to eq("[127.0.0.1]:#{sb.sshd(b).port} #{sb.sshd(b).host_key_line}\n")
    expect(File.read(a.cron_file)).to include("root #{a.wrapper} sync --config #{a.config}")
    expect(JSON.parse(File.read(a.config))).to include('role' => 'active', 'certname' => a.certname, 'state_dir' => a.state_dir)
    expect(File.read(a.facts_file)).to include(%(pe_failover_mode: "active"\npe_failover_passive_master: "127.0.0.1"\n))
    # The wrapper runs the installed module's CLI with this Ruby.
    expect(File.read(a.wrapper)).to include("-I #{sb.module_lib} #{sb.module_lib}/puppet_x/pe_failover/cli.rb")
    # The classification groups, on A's own classifier (through its API, with A's certificate).
    expect(sb.group_names(a)).to eq(['All Nodes', 'pe_failover', 'pe_failover-active', 'pe_failover-passive'])
    expect(sb.group_names(b)).to eq(['All Nodes'])

    apply!(b, sb.passive_manifest, 2)
    expect(File.read(b.authorized_keys))
      .to eq(%(restrict,command="#{b.wrapper} receive --config #{b.config}" #{File.read(a.public_key).strip}\n))
    expect(role_of(b)).to eq(%w[passive passive])

    apply!(a, sb.active_manifest, 0)
    apply!(b, sb.passive_manifest, 0)
  end

  it 'reports status through the installed face before the first sync: never synced on A, nothing applied on B' do
    code, out, = sb.face(a, 'status', '--render-as', 'json')
    expect(code).to eq(1)
    expect(JSON.parse(out)).to include('role' => 'active', 'healthy' => false, 'problems' => ["ca to 127.0.0.1:#{sb.sshd(b).port}: never synced"])
    code, out, = sb.face(b, 'status', '--render-as', 'json')
    expect(code).to eq(1)
    expect(JSON.parse(out)).to include('role' => 'passive', 'problems' => ['ca: nothing applied yet'])
  end

  it "lets A's transfer key into B's sshd, with B's host key pinned, and only as the receiver" do
    code, out = sb.ssh(a, b, 'echo not-the-receiver; id')
    expect(out).not_to include('not-the-receiver')
    expect(out).not_to include('uid=')
    expect(out).not_to match(%r{Host key verification failed|Permission denied})
    expect(File.read(sb.sshd(b).log_path)).to match(%r{Accepted publickey for root from 127\.0\.0\.1 .* ED25519})
    # The receiver got no HELLO and says so; either way the key ran nothing
    # but the forced command.
    expect(code).not_to eq(0)

    code, out, = sb.face(b, 'status', '--render-as', 'json')
    expect(code).to eq(1)
    expect(JSON.parse(out)['problems']).to eq(["ca: the receiver's last session failed: the sender closed the connection (while waiting for HELLO)"])
  end

  # Sync from `from`, apply on `to`; returns the outputs.
  def replicate(from, to)
    code, sync_out = sb.command(from, 'sync', '--config', from.config)
    expect(code).to eq(0), "sync on #{from.name}:\n#{sync_out}"
    code, apply_out = sb.command(to, 'apply', '--config', to.config)
    expect(code).to eq(0), "apply on #{to.name}:\n#{apply_out}"
    [sync_out, apply_out]
  end

  # A sync from `from` that must be refused by its fenced replica.
  def expect_fenced(from, to)
    before = Dir.children(File.join(to.cadir, 'signed')).sort
    code, out = sb.command(from, 'sync', '--config', from.config)
    expect(code).not_to eq(0), "a sync from #{from.name} to the promoted #{to.name} succeeded:\n#{out}"
    expect(out).to match(%r{fenced|promoted}i)
    expect(Dir.children(File.join(to.cadir, 'signed')).sort).to eq(before)
  end

  it "replicates sign, revoke and clean on A into B's ssl dir (sync, then watch --once)" do
    # The first sync is the baseline: B learns which of its certificates
    # came from A (until then, whatever B has it keeps as its own).
    replicate(a, b)
    sb.ca.sign('new-agent.example.com')
    sb.ca.revoke('agent000.example.com')
    sb.ca.clean('agent001.example.com')
    replicate(a, b)
    expect(File).to exist(File.join(b.cadir, 'signed', 'new-agent.example.com.pem'))
    expect(File).not_to exist(File.join(b.cadir, 'signed', 'agent001.example.com.pem'))
    %w[ca_crl.pem serial inventory.txt ca_crt.pem ca_key.pem].each do |f|
      expect(File.read(File.join(b.cadir, f))).to eq(File.read(File.join(a.cadir, f))), f
    end
    # B's own identity is its own.
    expect(File.read(File.join(b.ssldir, 'certs', "#{b.certname}.pem"))).to eq(sb.ca.certificate(b.certname).to_pem)

    # The face, installed with the module: diff shows what is pending, sync ships it.
    sb.ca.sign('watched-agent.example.com')
    code, out, err = sb.face(a, 'diff', '--render-as', 'json')
    expect(code).to eq(0), out + err
    expect(JSON.parse(out)).to include('ok' => true)
    expect(File).not_to exist(File.join(b.cadir, 'signed', 'watched-agent.example.com.pem'))
    code, out, err = sb.face(a, 'sync')
    expect(code).to eq(0), out + err
    expect(out).to include('PE_FAILOVER: sync ---> [SUCCESS]')
    code, out = sb.command(b, 'watch', '--config', b.config, '--once')
    expect(code).to eq(0), out
    expect(File).to exist(File.join(b.cadir, 'signed', 'watched-agent.example.com.pem'))

    code, out, = sb.face(a, 'status', '--render-as', 'json')
    expect(code).to eq(0), out
    code, out, = sb.face(b, 'status', '--render-as', 'json')
    expect(code).to eq(0), out
  end

  it 'with the watchers running, a signing on A reaches B by itself; a second apply changes nothing' do
    apply!(a, sb.active_manifest(service: 'running'), 2)
    apply!(b, sb.passive_manifest(service: 'running'), 2)
    apply!(a, sb.active_manifest(service: 'running'), 0)
    apply!(b, sb.passive_manifest(service: 'running'), 0)
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    sb.ca.sign('by-the-watchers.example.com')
    target = File.join(b.cadir, 'signed', 'by-the-watchers.example.com.pem')
    sleep 0.05 until File.exist?(target) || Process.clock_gettime(Process::CLOCK_MONOTONIC) - started > 30
    expect(File).to exist(target)
    # Stopped again through the pid-file provider; nothing keeps running.
    pids = [a, b].map { |m| File.read(m.pidfile).to_i }
    apply!(a, sb.active_manifest, 2)
    apply!(b, sb.passive_manifest, 2)
    pids.each { |pid| expect { Process.kill(0, pid) }.to raise_error(Errno::ESRCH) }
  end

  it "replicates group edits on A's classifier to B's" do
    a_nc = sb.classifiers.fetch(a.name).client(a.certname)
    b_nc = sb.classifiers.fetch(b.name)
    # B's classifier knows the classes A's groups use (update-classes).
    catalog = Hash.new { |h, k| h[k] = {} }
    a_nc.get('/classifier-api/v1/groups').json.each do |g|
      (g['classes'] || {}).each { |c, params| catalog[g['environment']][c] = params.keys.to_h { |p| [p, nil] } }
    end
    b_nc.stage_classes(catalog)
    apply!(a, sb.active_manifest(nc: true), 2)
    apply!(b, sb.passive_manifest(nc: true), 2)
    expect(File.stat(File.join(b.state_dir, 'nc', 'incoming')).mode & 0o7777).to eq(0o700)

    sync_out, apply_out = replicate(a, b)
    expect(sync_out).to match(%r{SUCCESS.*nc to 127\.0\.0\.1:\d+: committed})
    expect(apply_out).to match(%r{SUCCESS.*nc: classifier brought to groups})
    expect(sb.group_names(b)).to eq(sb.group_names(a))
    b_groups = b_nc.client(b.certname).get('/classifier-api/v1/groups').json
    expect(JSON.generate(b_groups)).not_to include(a.certname)

    # An edit on A's classifier follows; a second round changes nothing.
    group = a_nc.get('/classifier-api/v1/groups').json.find { |g| g['name'] == 'pe_failover' }
    res = a_nc.post("/classifier-api/v1/groups/#{group['id']}", { 'variables' => { 'pe_failover_edit' => 'on a' } })
    expect(res.status).to be < 300
    sync_out, = replicate(a, b)
    expect(sync_out).to match(%r{nc to .*: committed})
    edited = b_nc.client(b.certname).get('/classifier-api/v1/groups').json.find { |g| g['name'] == 'pe_failover' }
    expect(edited['variables']).to include('pe_failover_edit' => 'on a')
    sync_out, apply_out = replicate(a, b)
    expect(sync_out).to match(%r{nc to .*: already up to date})
    expect(apply_out).to match(%r{nc: classifier already holds groups})

    # Back to the CA only, as the other examples expect.
    apply!(a, sb.active_manifest, 2)
    apply!(b, sb.passive_manifest, 2)
  end

  it 'promotes B and demotes A with the face, effective at once (fencing), then with the swapped classes' do
    code, out, err = sb.face(b, 'promote')
    expect([code, err]).to eq([0, '']), out
    expect(out).to include("#{b.certname}: role passive -> active", 'fenced', 'pe_failover::active')
    expect(role_of(b)).to eq(%w[active active])
    sb.ca.sign('after-promotion.example.com') # A, not yet demoted, still tries
    expect_fenced(a, b)

    code, out, = sb.face(a, 'demote')
    expect(code).to eq(0), out
    expect(out).to include('stopped: 127.0.0.1', 'pe_failover::passive')
    expect(role_of(a)).to eq(%w[passive passive])
    expect(JSON.parse(File.read(a.config))['replicas']).to eq([])
    expect(sb.command(a, 'sync', '--config', a.config)[0]).not_to eq(0) # a passive ships nothing

    # The classes complete the swap: B ships to A's sshd, A accepts B's key.
    apply!(b, sb.active_manifest(b, a), 2)
    apply!(a, sb.passive_manifest(a, b), 2)
    (active_only(a) + passive_only(b)).each { |p| expect(File).not_to exist(p), "stale after the swap: #{p}" }
    (active_only(b).first(1) + passive_only(a)).each { |p| expect(File).to exist(p) }
    expect(File.read(a.authorized_keys)).to include(File.read(b.public_key).strip)
    apply!(b, sb.active_manifest(b, a), 0)
    apply!(a, sb.passive_manifest(a, b), 0)
    expect(sb.group_names(b)).to eq(['All Nodes', 'pe_failover', 'pe_failover-active', 'pe_failover-passive'])

    code, out = sb.ssh(b, a, 'echo not-the-receiver')
    expect(out).not_to include('not-the-receiver')
    expect(File.read(sb.sshd(a).log_path)).to include('Accepted publickey for root')
    expect(code).not_to eq(0) # the receiver got no HELLO

    # B, now active, signs with the shared CA (in B's cadir) and ships to A.
    b_ca = PeFailoverSpec::TestCA.open(b.ssldir)
    b_ca.sign('signed-on-b.example.com')
    replicate(b, a)
    expect(File).to exist(File.join(a.cadir, 'signed', 'signed-on-b.example.com.pem'))
  end

  it 'fails back: A active and B passive again (fencing the other way first), idempotent, nothing stale' do
    expect(sb.face(a, 'promote')[0]).to eq(0)
    expect_fenced(b, a) # the promoted A refuses B
    expect(sb.face(b, 'demote')[0]).to eq(0)
    apply!(a, sb.active_manifest, 2)
    apply!(b, sb.passive_manifest, 2)
    (active_only(b) + passive_only(a)).each { |p| expect(File).not_to exist(p), "stale after failback: #{p}" }
    expect(role_of(a)).to eq(%w[active active])
    expect(role_of(b)).to eq(%w[passive passive])
    apply!(a, sb.active_manifest, 0)
    apply!(b, sb.passive_manifest, 0)
    code, out = sb.ssh(a, b, 'echo not-the-receiver')
    expect(out).not_to include('not-the-receiver')
    expect(code).not_to eq(0)
    replicate(a, b)
  end

  it 'created nothing outside the sandbox: no user, group, cron entry, unit or default path' do
    expect(PeFailoverSpec::Sandbox.host_state).to eq(@host_before)
  end
end
