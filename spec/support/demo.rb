#!/usr/bin/env ruby
# frozen_string_literal: true

# `make demo`: the module's job, told step by step, on two Puppet primaries
# that live in a temporary directory on this machine (spec/support/sandbox.rb)
# and are removed at the end; nothing outside it is touched, and the demo
# checks that.
#
#   PE_FAILOVER_DEMO_CERTS=5000 make demo     more signed agents in the CA
#
# Needs root (sshd, files owned by root), OpenSSH, Puppet and the built
# extension; `make demo` installs and builds what is missing.

require 'fileutils'
require 'json'
require 'open3'
require 'tmpdir'
require_relative 'sandbox'

ROOT = File.expand_path('../..', __dir__)
CERTS = Integer(ENV.fetch('PE_FAILOVER_DEMO_CERTS', '500'))
BOLD = $stdout.tty? ? ["\e[1m", "\e[0m"] : ['', '']

def say(text)
  puts
  puts "#{BOLD[0]}==> #{text}#{BOLD[1]}"
end

# Paths inside the sandbox are shown relative to it ($SB).
def detail(text)
  text = text.to_s
  text = text.gsub($sandbox_root, '$SB') if $sandbox_root # rubocop:disable Style/GlobalVars
  text.each_line { |l| puts "    #{l.chomp}" }
end

def timed
  t = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  result = yield
  [result, Process.clock_gettime(Process::CLOCK_MONOTONIC) - t]
end

def fail!(text)
  warn "\ndemo failed: #{text}"
  exit 1
end

# The resources a `puppet apply` changed, as `Type[title]`.
def changes(out)
  out.lines.grep(%r{Notice: /Stage}).map { |l| l[%r{/([A-Z][\w:]*\[[^\]]*\])/[a-z_]+: }, 1] }.compact.uniq
end

# expect: the exit codes of --detailed-exitcodes allowed (0 nothing changed,
# 2 changes applied).
def apply(sb, master, manifest, expect:)
  (code, out, secs), = timed { sb.apply(master, manifest) }
  fail!("puppet apply on #{master.name} exited #{code}, expected #{expect}:\n#{out}") unless Array(expect).include?(code)
  [changes(out), secs]
end

fail!('run it as root: sshd and the files it manages need root') unless Process.uid.zero?
%w[/usr/sbin/sshd /usr/bin/ssh puppet].each do |tool|
  next if tool.start_with?('/') ? File.executable?(tool) : system("command -v #{tool} >/dev/null")

  fail!("#{tool} is missing (make deps installs it)")
end

metadata = JSON.parse(File.read(File.join(ROOT, 'metadata.json')))
tarball = File.join(ROOT, 'pkg', "#{metadata['name']}-#{metadata['version']}.tar.gz")
host_before = PeFailoverSpec::Sandbox.host_state
sb = PeFailoverSpec::Sandbox.new(root: Dir.mktmpdir('pe_failover-demo'))
$sandbox_root = sb.root # rubocop:disable Style/GlobalVars
a = sb.a
b = sb.b
total = Process.clock_gettime(Process::CLOCK_MONOTONIC)

begin
  say "Two primaries in $SB = #{sb.root}"
  detail "master A (#{a.certname}, the active one) lives in #{a.root}"
  detail "master B (#{b.certname}, its warm spare) lives in #{b.root}"
  detail 'each has its own ssl dir, Puppet state, /opt/pe_failover, facts.d, cron.d and run dirs there;'
  detail 'the transfer user is root with a private sshd, so no user, unit or cron entry is created on this host'

  say "Making A's Puppet CA with #{CERTS} signed agents; B starts with a copy, as a spare is built"
  _, secs = timed { sb.make_ca(certs: CERTS) }
  detail format('%.1fs: %s holds ca_crt.pem, ca_key.pem, ca_crl.pem, serial, inventory.txt, signed/*.pem', secs, a.cadir)
  detail "B has its own host certificate (#{b.certname}), signed by the same CA"

  say 'Building the module tarball and installing it with `puppet module install`'
  _, secs = timed do
    out, status = Open3.capture2e('rake', 'build', chdir: ROOT)
    fail!("rake build failed:\n#{out}") unless status.success?
    sb.install_module(tarball)
  end
  detail format('%.1fs: %s into %s', secs, File.basename(tarball), sb.modules)

  say "Starting B's sshd on 127.0.0.1 (its own host key and config; it reads the authorized_keys the module writes)"
  sb.start_sshd(b)
  detail "port #{sb.sshd(b).port}, host key #{sb.sshd(b).host_key_fingerprint}"

  say 'Starting a Node Classifier (the API emulator, HTTPS with client certificates) for each primary'
  _, secs = timed { sb.start_classifiers }
  sb.classifiers.each { |name, nc| detail "#{name}: #{nc.base_url}, allowlist: its own certname" }
  detail format('(%.1fs)', secs)

  say 'puppet apply on A: class pe_failover::active (passive_master => B, its host key pinned)'
  changed, secs = apply(sb, a, sb.active_manifest, expect: 2)
  detail format('%.1fs, %d resources changed, among them:', secs, changed.size)
  detail "  #{a.public_key}: a new ed25519 transfer key (root 0600; the .pub goes to B)"
  detail "  #{File.dirname(a.public_key)}/known_hosts: #{File.read(File.join(File.dirname(a.public_key), 'known_hosts')).strip[0, 60]}..."
  detail "  #{a.config}: role active, replica 127.0.0.1:#{sb.sshd(b).port}"
  detail "  #{a.cron_file}: #{File.read(a.cron_file).lines.grep(%r{sync}).first.strip}"
  detail "  #{a.facts_file}: #{File.read(a.facts_file).lines.grep(%r{mode}).first.strip}"
  detail "  A's classifier, through its API: #{sb.group_names(a).join(', ')}"

  say "puppet apply on B: class pe_failover::passive (auth_key => A's public key)"
  changed, secs = apply(sb, b, sb.passive_manifest, expect: 2)
  detail format('%.1fs, %d resources changed; the one authorized key on B is:', secs, changed.size)
  detail "  #{File.read(b.authorized_keys).strip[0, 150]}..."
  detail '  restrict + command=: the key can run the receiver and nothing else'

  say 'Applying both again: a converged host reports zero changes'
  [[a, sb.active_manifest], [b, sb.passive_manifest]].each do |m, manifest|
    changed, secs = apply(sb, m, manifest, expect: 0)
    detail format('%s: %d changes (%.1fs)', m.name, changed.size, secs)
  end

  say "Trying to use A's key for a shell on B"
  (code, out), secs = timed { sb.ssh(a, b, 'id; echo got-a-shell') }
  fail!("the transfer key ran a command of its choice:\n#{out}") if out.include?('got-a-shell')
  detail format('ssh exited %d in %.2fs; sshd accepted the key, ran the forced receiver, not `id`', code, secs)

  fail!("the installed module's native extension has no replication runner: run `make compile` first") unless sb.runner?

  say 'First sync, A -> B: `pe_failover sync` on A, `pe_failover apply` on B (the baseline)'
  (code, out), secs = timed { sb.command(a, 'sync', '--config', a.config) }
  fail!("sync failed:\n#{out}") unless code.zero?
  detail format('sync %.2fs: %s', secs, out.strip)
  (code, out), secs = timed { sb.command(b, 'apply', '--config', b.config) }
  fail!("apply on B failed:\n#{out}") unless code.zero?
  detail format('apply %.2fs: %s', secs, out.strip)

  say 'Starting the watchers (service ensure => running, pid-file provider)'
  [[a, sb.active_manifest(service: 'running')], [b, sb.passive_manifest(service: 'running')]].each do |m, manifest|
    _, secs = apply(sb, m, manifest, expect: 2)
    detail format('%s: watcher pid %s (%.1fs)', m.name, File.read(m.pidfile).strip, secs)
  end

  say 'On A: signing a new agent, revoking one, cleaning another; nobody runs anything else'
  started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  sb.ca.sign('new-agent.example.com')
  sb.ca.revoke('agent000.example.com')
  sb.ca.clean('agent001.example.com')
  arrived = lambda do
    File.exist?(File.join(b.cadir, 'signed', 'new-agent.example.com.pem')) &&
      !File.exist?(File.join(b.cadir, 'signed', 'agent001.example.com.pem')) &&
      File.read(File.join(b.cadir, 'ca_crl.pem')) == File.read(File.join(a.cadir, 'ca_crl.pem'))
  end
  sleep 0.02 until arrived.call || Process.clock_gettime(Process::CLOCK_MONOTONIC) - started > 30
  fail!("B did not follow A within 30 s:\n#{sb.face(a, 'status')[1]}") unless arrived.call
  lag = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
  detail format('%.2fs after the last change, B had signed/new-agent.example.com.pem, no agent001, and A\'s CRL', lag)
  detail "B's own certificate and key (#{b.certname}) were not touched"
  (code, out), secs = timed { sb.command(a, 'sync', '--config', a.config) }
  fail!("sync on A failed:\n#{out}") unless code.zero?
  fail!("A's watcher did not run the sync:\n#{out}") unless out.include?('run by the watcher')
  detail format("`pe_failover sync` on A meanwhile: run by A's watcher, no scan of the CA (%.2fs, Ruby start-up included)",
                secs)
  detail "  #{out.lines.grep(%r{PE_FAILOVER: sync ---> \[\w+\] ca }).first.to_s.strip}"

  say "Classifier groups: turning on their replication (nc_enabled => true), then editing a group on A"
  a_nc = sb.classifiers.fetch(a.name).client(a.certname)
  b_nc = sb.classifiers.fetch(b.name)
  # B's classifier must know the classes A's groups use (as after a code deploy and a class refresh).
  catalog = Hash.new { |h, k| h[k] = {} }
  a_nc.get('/classifier-api/v1/groups').json.each do |g|
    (g['classes'] || {}).each { |c, params| catalog[g['environment']][c] = params.keys.to_h { |k| [k, nil] } }
  end
  b_nc.stage_classes(catalog)
  [[a, sb.active_manifest(nc: true)], [b, sb.passive_manifest(nc: true)]].each do |m, manifest|
    changed, secs = apply(sb, m, manifest, expect: [0, 2])
    detail format('%s: %d resources changed (%.1fs)', m.name, changed.size, secs)
  end
  group = a_nc.get('/classifier-api/v1/groups').json.find { |g| g['name'] == 'pe_failover' }
  a_nc.post("/classifier-api/v1/groups/#{group['id']}", { 'variables' => { 'demo_server' => "#{a.certname}:8140" } })
  detail "A: variable demo_server => '#{a.certname}:8140' set on group pe_failover through A's classifier API"
  (sync, apply_b), secs = timed do
    [sb.command(a, 'sync', '--config', a.config), sb.command(b, 'apply', '--config', b.config)]
  end
  [[a, sync], [b, apply_b]].each do |m, (code, out)|
    fail!("#{m.name}: exit #{code}\n#{out}") unless code.zero?
    out.lines.grep(%r{PE_FAILOVER: (nc |\w+ ---> \[\w+\] nc\b)}).each { |l| detail "#{m.name}: #{l.strip}" }
  end
  b_groups = b_nc.client(b.certname).get('/classifier-api/v1/groups').json
  edited = b_groups.find { |g| g['name'] == 'pe_failover' }
  value = edited && edited.dig('variables', 'demo_server')
  fail!("the edit did not reach B's classifier rewritten (demo_server: #{value.inspect})") unless value == "#{b.certname}:8140"
  detail format("B's classifier has the edit as demo_server => '%s' (sync on A + apply on B: %.2fs); none of its %d groups names %s",
                value, secs, b_groups.size, a.certname)
  fail!("A's certname is still in B's groups") if JSON.generate(b_groups).include?(a.certname)

  say 'Promoting B and demoting A with `puppet pe_failover promote|demote`'
  code, out, = sb.face(b, 'promote')
  fail!("promote failed:\n#{out}") unless code.zero?
  detail "B: #{out}"
  code, out = sb.command(a, 'sync', '--config', a.config)
  fail!("A's sync to the promoted B was not refused:\n#{out}") if code.zero?
  detail "A, not demoted yet, tries to sync (exit #{code}): #{out.strip.lines.last(2).join(' ')}"
  code, out, = sb.face(a, 'demote')
  fail!("demote failed:\n#{out}") unless code.zero?
  detail "A: #{out}"

  say 'Failing back: promote A, demote B, and apply the original classes again'
  [sb.face(a, 'promote'), sb.face(b, 'demote')].each { |c, o,| fail!(o) unless c.zero? }
  [[a, sb.active_manifest], [b, sb.passive_manifest]].each do |m, manifest|
    changed, secs = apply(sb, m, manifest, expect: [0, 2])
    detail format('%s: %d resources changed (%.1fs)%s', m.name, changed.size, secs,
                  changed.empty? ? ': the face had already written what the class writes' : ": #{changed.join(', ')}")
  end

  say 'After the failback, one sync from A and one apply on B clear the fencing errors'
  [[a, 'sync'], [b, 'apply']].each do |m, cmd|
    (code, out), secs = timed { sb.command(m, cmd, '--config', m.config) }
    fail!("#{cmd} on #{m.name} failed:\n#{out}") unless code.zero?
    detail format('%s %s (%.2fs): %s', m.name, cmd, secs, out.strip)
  end

  say 'Status: `puppet pe_failover status` on each primary (exit 1 means unhealthy)'
  [a, b].each do |m|
    code, out, = sb.face(m, 'status')
    detail "#{m.name} (exit #{code}):"
    detail out
  end
  detail '(the same data is in the structured fact pe_failover, and in `--render-as json`)'
ensure
  say 'Removing the sandbox'
  sb.cleanup
  if PeFailoverSpec::Sandbox.host_state == host_before
    detail 'gone; no user, group, cron entry, unit or default path was created on this host'
  else
    detail 'WARNING: the host state changed during the demo (users, cron.d, units or /opt/pe_failover)'
  end
  detail format('the whole demo took %.1fs', Process.clock_gettime(Process::CLOCK_MONOTONIC) - total)
end
