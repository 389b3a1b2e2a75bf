# frozen_string_literal: true

# The `pe_failover` structured fact.
#
#   ruby    the Ruby interpreter that runs Puppet (and this fact) on this host;
#           the pe_failover command line runs with it
#   libdir  the `lib` directory this fact was loaded from: the module's own
#           (puppet apply) or the agent's pluginsync copy; it holds
#           puppet_x/pe_failover/cli.rb and the native extension
#
# Further keys (role, replication status) are added by the code that
# produces them. The fact never raises: a failure is logged at debug level
# and the fact is left out.
Facter.add(:pe_failover) do
  setcode do
    begin
      require 'rbconfig'
      {
        'ruby' => RbConfig.ruby,
        # <libdir>/facter/pe_failover.rb: two levels up from this file.
        'libdir' => File.expand_path('../..', __FILE__),
      }
    rescue StandardError, LoadError => e
      Facter.debug("pe_failover fact: #{e.class}: #{e.message}")
      nil
    end
  end
end
