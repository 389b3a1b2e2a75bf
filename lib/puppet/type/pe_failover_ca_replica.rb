# frozen_string_literal: true

Puppet::Type.newtype(:pe_failover_ca_replica) do
  @doc = <<~DOC
    @summary Keeps one passive primary's copy of this host's CA current.

    Each Puppet run compares the CA (and `crl.pem`, `certs/ca.pem`) with what
    the replica last received and ships only what changed, over the SSH
    transport configured in the pe_failover configuration file. In noop mode
    it reports what would be shipped and sends nothing. When the pe_failover
    watcher runs on this host with the same configuration file, it does
    both for the provider (from what inotify told it, over its open SSH
    session) instead of the provider scanning the whole CA.

    The native extension is loaded by the provider, never by this type, so
    catalogs that declare it compile under Puppet Server (JRuby).

    @example
      pe_failover_ca_replica { 'b.example.com':
        config => '/opt/pe_failover/etc/config.json',
      }
  DOC

  newparam(:name, namevar: true) do
    desc 'The replica host, as listed in the configuration file.'
    validate do |value|
      raise ArgumentError, "replica host must be a host name, got #{value.inspect}" unless value.is_a?(String) && value.match?(%r{\A[A-Za-z0-9.\-:\[\]]+\z})
    end
  end

  newparam(:config) do
    desc 'Path of the pe_failover configuration file.'
    defaultto '/opt/pe_failover/etc/config.json'
    validate do |value|
      raise ArgumentError, "config must be an absolute path, got #{value.inspect}" unless Puppet::Util.absolute_path?(value)
    end
  end

  newproperty(:state) do
    desc 'Whether the replica holds the current CA. Only `in_sync` can be requested.'
    newvalue(:in_sync)
    defaultto :in_sync

    def retrieve
      provider.state
    end

    def insync?(is)
      is == :in_sync
    end

    def change_to_s(_current, _desired)
      provider.change_summary
    end

    def set(_value)
      provider.sync!
    end
  end

  autorequire(:file) { [self[:config]] }
end
