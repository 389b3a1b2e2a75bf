# frozen_string_literal: true

# Facts of the pe_failover module.
#
# `pe_failover` (structured):
#
#   ruby      the Ruby interpreter that runs Puppet (and this fact) on this
#             host; the pe_failover command line runs with it
#   libdir    the `lib` directory this fact was loaded from: the module's own
#             (puppet apply) or the agent's pluginsync copy; it holds
#             puppet_x/pe_failover/cli.rb and the native extension
#
# and, once a role class has written the configuration
# (/opt/pe_failover/etc/config.json, or $PE_FAILOVER_CONFIG):
#
#   role      active | passive
#   certname  this host's certname as configured
#   healthy   false when any replica/kind below has a problem
#   replicas  replica name => kind (ca, nc) => last_success (RFC 3339),
#             seconds_since_success, staged/applied digests (passive),
#             shipped digest (active), last_error {kind, message, time},
#             healthy; on a passive the only "replica" is this host
#   problems  sentences saying what is unhealthy
#
# These are read from the status files in plain Ruby (no native extension).
#
# `pe_failover_mode` and `pe_failover_passive_master` are the flat facts of
# the original module. The role classes write them to
# `<facts_dir>/pe_failover.yaml` (an external fact, which wins); the
# resolutions here answer from the configuration when that file is not in a
# directory Facter reads.
#
# No fact ever raises: a failure is logged at debug level and the fact (or
# the part that failed) is left out.
module PeFailoverFacts
  # The configuration as a Hash, or nil when there is none.
  def self.config
    require_relative '../puppet_x/pe_failover/status'
    path = PuppetX::PeFailover::Status.default_config
    File.exist?(path) ? PuppetX::PeFailover::Status.load_config(path) : nil
  rescue StandardError, LoadError => e
    Facter.debug("pe_failover fact: #{e.class}: #{e.message}")
    nil
  end

  # The replication part of the structured fact, or {} without a config.
  def self.replication
    require_relative '../puppet_x/pe_failover/status'
    path = PuppetX::PeFailover::Status.default_config
    return {} unless File.exist?(path)

    status = PuppetX::PeFailover::Status.read(config: path)
    status.slice('role', 'healthy', 'replicas', 'problems').merge('certname' => status['host'])
  rescue StandardError, LoadError => e
    Facter.debug("pe_failover fact: #{e.class}: #{e.message}")
    {}
  end
end

Facter.add(:pe_failover) do
  setcode do
    begin
      require 'rbconfig'
      {
        'ruby' => RbConfig.ruby,
        # <libdir>/facter/pe_failover.rb: two levels up from this file.
        'libdir' => File.expand_path('../..', __FILE__),
      }.merge(PeFailoverFacts.replication)
    rescue StandardError, LoadError => e
      Facter.debug("pe_failover fact: #{e.class}: #{e.message}")
      nil
    end
  end
end

Facter.add(:pe_failover_mode) do
  setcode do
    role = PeFailoverFacts.config&.dig('role')
    %w[active passive].include?(role) ? role : nil
  end
end

Facter.add(:pe_failover_passive_master) do
  setcode do
    config = PeFailoverFacts.config
    if config && config['role'] == 'active'
      first = Array(config['replicas']).first
      first.is_a?(Hash) ? first['host'] : nil
    end
  end
end
