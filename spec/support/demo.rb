#!/usr/bin/env ruby
# frozen_string_literal: true

# `make demo`: what pe_failover does today, told step by step on a sandbox
# that lives in a temporary directory and is removed at the end.
#
# 1. make a Puppet CA (the real file layout) with a few thousand signed certs;
# 2. install the module tarball with `puppet module install`;
# 3. take the CA's root digest from `puppet apply`, then sign, revoke and
#    clean certificates and show what `pe_failover::ssl_diff` reports;
# 4. show the stat cache: a re-scan of an unchanged CA hashes nothing.

require 'fileutils'
require 'json'
require 'open3'
require 'tmpdir'
require_relative 'test_ca'
require_relative '../../lib/puppet_x/pe_failover/snapshot'

ROOT = File.expand_path('../..', __dir__)
CERTS = Integer(ENV.fetch('PE_FAILOVER_DEMO_CERTS', '2000'))

def say(text)
  puts
  puts "\e[1m==> #{text}\e[0m"
end

def detail(text)
  puts "    #{text}"
end

def timed
  t = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  result = yield
  [result, Process.clock_gettime(Process::CLOCK_MONOTONIC) - t]
end

def run!(*cmd, **opts)
  out, status = Open3.capture2e(*cmd, **opts)
  abort("demo failed: #{cmd.join(' ')}\n#{out}") unless status.success? || opts[:allow_fail]
  out
end

metadata = JSON.parse(File.read(File.join(ROOT, 'metadata.json')))
tarball = File.join(ROOT, 'pkg', "#{metadata['name']}-#{metadata['version']}.tar.gz")

Dir.mktmpdir('pe_failover-demo') do |sandbox|
  puppet_dirs = %w[confdir vardir codedir logdir rundir].flat_map do |d|
    FileUtils.mkdir_p(File.join(sandbox, d))
    ["--#{d}", File.join(sandbox, d)]
  end
  modules = File.join(sandbox, 'modules')
  ssl = File.join(sandbox, 'primary-a', 'ssl')

  say "Sandbox #{sandbox} (removed when the demo ends; nothing outside it is touched)"

  say "Making a Puppet CA for primary-a with #{CERTS} signed agent certificates"
  ca, secs = timed do
    ca = PeFailoverSpec::TestCA.create(ssl, ca_name: 'Puppet CA: primary-a.example.com')
    CERTS.times { |i| ca.sign(format('agent%05d.example.com', i)) }
    ca.host_files('primary-a.example.com', ssl)
    ca
  end
  detail format('%.1fs: %s/ca holds ca_crt.pem, ca_key.pem, ca_crl.pem, serial, inventory.txt, signed/*.pem', secs, ssl)

  say 'Building the module tarball and installing it with `puppet module install`'
  run!('rake', 'build', chdir: ROOT)
  run!('puppet', 'module', 'install', '--ignore-dependencies', '--target-dir', modules, tarball, *puppet_dirs)
  detail "installed #{File.basename(tarball)} into #{modules}"

  modulepath = [modules, '/usr/share/puppet/modules'].join(':')
  apply = lambda do |code|
    run!('puppet', 'apply', '--color=false', '--modulepath', modulepath, *puppet_dirs, '-e', code)
      .lines.grep(%r{Notice: Scope}).map { |l| l.sub(%r{.*Notice: Scope\(Class\[main\]\): }, '').strip }
  end

  say 'Asking Puppet for the root digest of the CA (pe_failover::ssl_digest)'
  (digest,), secs = timed { apply.call("notice(pe_failover::ssl_digest('#{ssl}/ca'))") }
  detail format('%s   (puppet apply, %.1fs including Puppet start-up)', digest, secs)
  detail 'the digest covers every path, type, mode, owner, size, mtime and SHA-256: equal digests, equal trees'

  baseline = File.join(sandbox, 'primary-a-before')
  FileUtils.cp_r(ssl, baseline, preserve: true)

  say 'Signing a new agent, revoking one, cleaning another'
  ca.sign('newagent.example.com')
  ca.revoke('agent00001.example.com')
  ca.clean('agent00002.example.com')
  detail 'revoking rewrites ca_crl.pem and nothing in signed/ (the original module missed exactly that)'

  say 'What changed since the copy (pe_failover::ssl_diff)'
  (diff,), = timed do
    apply.call("notice(to_json(pe_failover::ssl_diff('#{baseline}/ca', '#{ssl}/ca')))")
  end
  JSON.parse(diff).each { |kind, paths| detail format('%-8s %s', kind, paths.empty? ? '-' : paths.join(', ')) }

  say 'Scanning again and again: the stat cache makes unchanged re-scans cost a stat per file'
  cache = File.join(sandbox, 'scan.cache')
  sleep 2.1 # files written in the last 2 s are never trusted from the cache
  first, t1 = timed { PuppetX::PeFailover::Snapshot.scan("#{ssl}/ca", cache: cache) }
  second, t2 = timed { PuppetX::PeFailover::Snapshot.scan("#{ssl}/ca", cache: cache) }
  detail format('first scan:  %d files, %d hashed, %.3fs', first['stats']['files'], first['stats']['hashed'], t1)
  detail format('second scan: %d files, %d hashed, %.3fs (%.0fx faster)', second['stats']['files'],
                second['stats']['hashed'], t2, t1 / t2)
  detail "same digest: #{first['digest'] == second['digest']}"

  say 'Done. Next in the roadmap: shipping these changesets to a passive primary over SSH.'
end
