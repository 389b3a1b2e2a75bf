# frozen_string_literal: true

require 'json'
require 'fileutils'
require_relative 'errors'
require_relative 'status'

module PuppetX
  module PeFailover
    # Promotion and demotion of a primary, effective at once.
    #
    # A role change is, in the end, a Puppet run with the other role class.
    # Until that run, this module flips the two files the running code reads
    # the role from, so the change takes effect immediately:
    #
    # * the configuration (`role`; a demoted host also loses its
    #   `replicas`, so it ships nothing any more), read by every command;
    # * the facts file (`pe_failover_mode`), which is the role file the
    #   receiver and applier check for fencing, and the fact the
    #   `pe_failover-active`/`pe_failover-passive` classifier groups match.
    #
    # Both files are replaced atomically and keep their owner and mode.
    module Role
      # Default facts file written by the Puppet classes.
      DEFAULT_FACTS_FILE = '/opt/puppetlabs/facter/facts.d/pe_failover.yaml'

      module_function

      # Makes a passive host active.
      # @return [Hash] see {change}
      def promote(config:, facts_file: DEFAULT_FACTS_FILE)
        change(config: config, facts_file: facts_file, to: 'active')
      end

      # Makes an active host passive.
      # @return [Hash] see {change}
      def demote(config:, facts_file: DEFAULT_FACTS_FILE)
        change(config: config, facts_file: facts_file, to: 'passive')
      end

      # Sets this host's role to `to` in the configuration and facts file.
      #
      # @param config [String] configuration file
      # @param facts_file [String] the `pe_failover.yaml` external facts file
      # @param to [String] `active` or `passive`
      # @return [Hash] `'ok'`, `'host'`, `'role_before'`, `'role'`,
      #   `'changed'` (files rewritten), `'stopped_replicas'`, `'lines'`
      #   (what happened and what completes the change)
      # @raise [InvalidInputError] for an unreadable configuration
      def change(config:, facts_file:, to:)
        raise ArgumentError, "role must be active or passive, not #{to.inspect}" unless %w[active passive].include?(to)

        cfg = Status.load_config(config)
        before = cfg['role'].to_s
        host = cfg['certname'] || 'this host'
        changed = []
        stopped = []

        if before != to || (to == 'passive' && !Array(cfg['replicas']).empty?)
          cfg['role'] = to
          if to == 'passive'
            stopped = Array(cfg['replicas']).map { |r| r['host'] }
            cfg['replicas'] = []
          end
          replace(config, "#{JSON.pretty_generate(cfg)}\n")
          changed << config
        end

        text = File.exist?(facts_file) ? File.read(facts_file) : nil
        new_text = facts_text(text, to)
        if new_text != text
          replace(facts_file, new_text, default_mode: 0o644)
          changed << facts_file
        end

        {
          'ok' => true,
          'host' => host,
          'role_before' => before,
          'role' => to,
          'changed' => changed,
          'stopped_replicas' => stopped,
          'lines' => lines(host, before, to, changed, stopped, config),
        }
      end

      # The facts file with `pe_failover_mode` set to `role`; on a passive
      # the `pe_failover_passive_master` line goes (a passive has none).
      def facts_text(text, role)
        kept = (text || "---\n").lines.reject do |l|
          l =~ %r{\Ape_failover_mode\s*[:=]} || (role == 'passive' && l =~ %r{\Ape_failover_passive_master\s*[:=]})
        end
        kept << "\n" unless kept.empty? || kept.last.end_with?("\n")
        # Right after the header comment and document start, like the template.
        at = kept.index { |l| !l.start_with?('#', '---') } || kept.size
        kept.insert(at, %(pe_failover_mode: "#{role}"\n))
        kept.join
      end

      # The report of a role change on `host`, one line per fact.
      # @api private
      def lines(host, before, to, changed, stopped, config)
        out = []
        if changed.empty?
          out << "#{host} is already #{to}; nothing changed"
        else
          out << "#{host}: role #{before.empty? ? 'unset' : before} -> #{to} (rewrote #{changed.join(', ')})"
        end
        if to == 'active'
          out << "#{host} now refuses transactions from its old primary (fenced)."
          out << "Complete the promotion with a Puppet run that declares pe_failover::active on #{host} " \
                 '(passive_master => the old primary once it is back as a passive). With the pe_failover ' \
                 'classifier groups, the fact pe_failover_mode=active already moves it into ' \
                 'pe_failover-active at its next agent run.'
        else
          out << "#{host} ships nothing any more (stopped: #{stopped.join(', ')})." unless stopped.empty?
          out << "Complete the demotion with a Puppet run that declares pe_failover::passive on #{host} " \
                 "(auth_key => the new active's #{File.dirname(File.dirname(config))}/ssh/id_ed25519.pub); " \
                 'it installs the authorized key and removes the transfer key and cron entry.'
        end
        out << 'Restart the watcher (or let that Puppet run do it) so it works in the new role.'
        out
      end

      # Replaces path atomically, keeping its owner and mode.
      def replace(path, content, default_mode: 0o640)
        st = File.exist?(path) ? File.stat(path) : nil
        tmp = "#{path}.tmp.#{Process.pid}"
        File.open(tmp, File::WRONLY | File::CREAT | File::EXCL, st ? st.mode & 0o7777 : default_mode) do |f|
          f.write(content)
          f.flush
          f.fsync
        end
        File.chown(st.uid, st.gid, tmp) if st && Process.uid.zero?
        File.rename(tmp, path)
      rescue StandardError
        FileUtils.rm_f(tmp) if tmp
        raise
      end
    end
  end
end
