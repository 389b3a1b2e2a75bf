# frozen_string_literal: true

Puppet::Type.newtype(:pe_failover_node_group) do
  @doc = <<~DOC
    @summary A node group of the PE Node Classifier, managed through its API.

    The group is found by name (and environment, when several groups share
    the name). Properties left unset are not managed. `classes` and
    `variables` are authoritative: classes, parameters and variables not
    listed are removed from the group. A run writes at most one call per
    group, carrying only what differs, and none when nothing does; with
    `--noop` it only reports.

    The provider talks to the classifier with this host's Puppet certificate,
    which must be in `/etc/puppetlabs/console-services/rbac-certificate-allowlist`
    on the classifier's host (PE puts the primary's own certname there), and
    trusts only the Puppet CA. It needs the module's native extension, so it
    runs on the agent (the type itself loads no native code).

    @example The groups pe_failover classifies its primaries with
      pe_failover_node_group { 'pe_failover':
        parent => 'PE Infrastructure',
        rule   => ['and', ['~', ['fact', 'pe_failover_mode'], '^(active|passive)$']],
      }
      pe_failover_node_group { 'pe_failover-active':
        parent  => 'pe_failover',
        rule    => ['and', ['=', ['fact', 'pe_failover_mode'], 'active']],
        classes => { 'pe_failover::active' => { 'passive_master' => 'b.example.com' } },
      }
      pe_failover_node_group { 'pe_failover-passive':
        parent => 'pe_failover',
        rule   => ['and', ['=', ['fact', 'pe_failover_mode'], 'passive']],
      }
  DOC

  # Operators and boolean heads a rule may start with (nc-api §5.1).
  rule_heads = %w[and or not = ~ > >= < <=].freeze

  ensurable do
    desc 'Whether the group exists. A group with child groups cannot be removed.'
    defaultvalues
    defaultto :present
  end

  newparam(:name, namevar: true) do
    desc 'The name of the group (unique within its environment).'
    validate do |value|
      raise ArgumentError, 'the group name must be a non-empty string' unless value.is_a?(String) && !value.strip.empty?
    end
  end

  newproperty(:parent) do
    desc "The name of the parent group. Default: `All Nodes`, the root."
    defaultto 'All Nodes'
    validate do |value|
      raise ArgumentError, 'parent must be the non-empty name of a group' unless value.is_a?(String) && !value.strip.empty?
    end
  end

  newproperty(:environment) do
    desc 'The Puppet environment of the group (its classes are checked in it). Default: `production`.'
    defaultto 'production'
    validate do |value|
      unless value.is_a?(String) && value.match?(%r{\A[A-Za-z0-9_-]+\z})
        raise ArgumentError, "environment must be an environment name (letters, digits, _ and -), got #{value.inspect}"
      end
    end
  end

  newproperty(:rule, array_matching: :all) do
    desc <<~DESC
      The rule that matches nodes, in the classifier's grammar, for example
      `['and', ['=', ['fact', 'pe_failover_mode'], 'active']]`. Pinned nodes
      are `['=', 'name', '<certname>']` clauses under a top-level `or`.
      `[]` means no rule.
    DESC

    validate do |value|
      # Called for each element of the rule; the whole rule is checked by the type.
      unless value.is_a?(String) || value.is_a?(Array) || value.is_a?(Integer)
        raise ArgumentError, "a rule holds strings, numbers and arrays, got #{value.inspect}"
      end
    end

    # An absent rule and `[]` are the same.
    def insync?(is)
      Array(is == :absent ? [] : is) == Array(should)
    end

    def should_to_s(value)
      value.to_s
    end

    def is_to_s(value) # rubocop:disable Naming/PredicateName
      value.to_s
    end
  end

  newproperty(:classes) do
    desc <<~DESC
      The classes of the group with their parameters:
      `{ 'class' => { 'parameter' => value } }`. Authoritative: classes and
      parameters not listed are removed. The classes must exist in the
      group's environment on the classifier.
    DESC

    validate do |value|
      unless value.is_a?(Hash) && value.all? { |k, v| k.is_a?(String) && !k.empty? && (v.nil? || v.is_a?(Hash)) }
        raise ArgumentError, "classes must be a Hash of class name => Hash of parameters, got #{value.inspect}"
      end
    end

    munge do |value|
      value.transform_values { |params| params || {} }
    end
  end

  newproperty(:variables) do
    desc 'Top-scope variables set for the nodes of the group: `{ name => value }`. Authoritative.'
    validate do |value|
      unless value.is_a?(Hash) && value.keys.all? { |k| k.is_a?(String) && !k.empty? }
        raise ArgumentError, "variables must be a Hash of name => value, got #{value.inspect}"
      end
    end
  end

  newproperty(:description) do
    desc "A description of the group. `''` means none."
    validate do |value|
      raise ArgumentError, "description must be a string, got #{value.inspect}" unless value.is_a?(String)
    end

    def insync?(is)
      (is == :absent ? '' : is.to_s) == should.to_s
    end
  end

  newparam(:server) do
    desc "URL of the classifier. Default: `https://<this host's FQDN>:4433`, the primary's own."
    defaultto do
      fqdn = Facter.value('networking.fqdn') || Facter.value(:fqdn) || Puppet[:certname]
      "https://#{fqdn}:4433"
    end
    validate do |value|
      raise ArgumentError, "server must be an https:// URL, got #{value.inspect}" unless value.is_a?(String) && value.start_with?('https://')
    end
  end

  newparam(:cert) do
    desc "Client certificate (PEM). Default: this host's, `$ssldir/certs/<certname>.pem`."
    defaultto { Puppet[:hostcert] }
  end

  newparam(:key) do
    desc 'Private key of the client certificate (PEM). Default: `$ssldir/private_keys/<certname>.pem`. Never logged.'
    defaultto { Puppet[:hostprivkey] }
  end

  newparam(:cacert) do
    desc 'The Puppet CA certificate, the only one trusted for the server. Default: `$ssldir/certs/ca.pem`.'
    defaultto { Puppet[:localcacert] }
  end

  newparam(:crl) do
    desc 'A CRL to check the server certificate against. Default: `$ssldir/crl.pem` when it exists.'
    defaultto do
      crl = Puppet[:hostcrl]
      crl.is_a?(String) && File.exist?(crl) ? crl : nil
    end
  end

  newparam(:connect_timeout) do
    desc 'Seconds to connect to the classifier. Default: 10.'
    defaultto 10
    munge { |value| Float(value) }
  end

  newparam(:timeout) do
    desc 'Seconds one request may take. Default: 120.'
    defaultto 120
    munge { |value| Float(value) }
  end

  newparam(:retry_for) do
    desc 'Seconds to keep retrying while the classifier starts (connection refused, 503). Default: 120.'
    defaultto 120
    munge { |value| Float(value) }
  end

  # One validate block per type: Puppet keeps only the last one.
  validate do
    %i[cert key cacert].each do |file|
      path = self[file]
      next if path.is_a?(String) && Puppet::Util.absolute_path?(path)

      raise ArgumentError, "#{file} must be an absolute path, got #{path.inspect}"
    end
    rule = self[:rule]
    if rule.is_a?(Array) && !rule.empty? && !rule_heads.include?(rule.first)
      raise ArgumentError, "rule must start with one of #{rule_heads.join(', ')} (the classifier's rule grammar), got #{rule.inspect}"
    end
  end

  autorequire(:pe_failover_node_group) do
    [self[:parent]].compact
  end
end
