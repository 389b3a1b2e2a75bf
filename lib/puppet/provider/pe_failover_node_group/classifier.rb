# frozen_string_literal: true

Puppet::Type.type(:pe_failover_node_group).provide(:classifier) do
  desc <<~DESC
    Manages node groups through the Node Classifier API (`/classifier-api/v1`),
    with the pe_failover native client: mutual TLS with the host's Puppet
    certificate, the Puppet CA as the only trust anchor, retries while
    pe-console-services starts. Groups are read once per run and classifier;
    each changed group costs one call carrying only what differs.
  DESC

  # The native extension loads on the agent (MRI), never under Puppet Server.
  confine feature: :pe_failover_native

  mk_resource_methods

  class << self
    # The properties sent on flush.
    # @api private
    def managed
      %i[parent environment rule classes variables description]
    end

    # Native clients, one per connection setting, kept for the process.
    # @api private
    def clients
      @clients ||= {}
    end

    # The connection settings of a resource.
    # @api private
    def connection(resource)
      { server: resource[:server], cert: resource[:cert], key: resource[:key], cacert: resource[:cacert],
        crl: resource[:crl], connect_timeout: resource[:connect_timeout], timeout: resource[:timeout],
        retry_for: resource[:retry_for] }
    end

    # The client for these settings; the native code is loaded here, on
    # first use.
    # @api private
    def client(settings)
      clients[settings] ||= begin
        require_relative '../../../puppet_x/pe_failover/classifier'
        PuppetX::PeFailover::Classifier::Client.new(**settings)
      end
    end

    # Every group of the default classifier (`puppet resource pe_failover_node_group`).
    def instances
      settings = connection(resource_type.new(name: 'instances'))
      groups = fetch(settings)
      groups.map { |g| new(properties(g, groups)) }
    end

    # Reads the groups once per classifier and hands each resource its
    # current state.
    def prefetch(resources)
      resources.values.group_by { |r| connection(r) }.each do |settings, list|
        groups = fetch(settings)
        list.each do |resource|
          found = pick(groups, resource[:name], resource.should(:environment))
          resource.provider = new(properties(found, groups)) if found
        end
      end
    end

    # @api private
    def fetch(settings)
      client(settings).groups
    rescue PuppetX::PeFailover::Error => e
      raise Puppet::Error, "pe_failover_node_group: cannot read the groups of #{settings[:server]}: #{e.message}"
    end

    # The group named `name`; among several of that name, the one in
    # `environment`.
    # @api private
    def pick(groups, name, environment)
      named = groups.select { |g| g['name'] == name }
      return named.first if named.size <= 1

      named.find { |g| g['environment'] == environment }
    end

    # The provider state of a classifier group.
    # @api private
    def properties(group, groups)
      names = groups.to_h { |g| [g['id'], g['name']] }
      root = group['id'] == group['parent']
      { name: group['name'], ensure: :present, id: group['id'],
        parent: root ? group['name'] : names.fetch(group['parent'], group['parent']),
        environment: group['environment'], rule: group['rule'] || [], classes: group['classes'] || {},
        variables: group['variables'] || {}, description: group['description'] || '' }
    end
  end

  def initialize(value = {})
    super(value)
    @property_flush = {}
  end

  def exists?
    @property_hash[:ensure] == :present
  end

  def create
    @property_flush[:ensure] = :present
  end

  def destroy
    @property_flush[:ensure] = :absent
  end

  managed.each do |property|
    define_method(:"#{property}=") do |value|
      @property_flush[property] = value
    end
  end

  # Makes the one call the run needs (Puppet calls this only outside noop).
  def flush
    return if @property_flush.empty?

    client = self.class.client(self.class.connection(resource))
    if @property_flush[:ensure] == :absent
      client.delete_group(resource[:name], environment: @property_hash[:environment])
      @property_hash = { name: resource[:name], ensure: :absent }
    else
      outcome = client.upsert_group(**spec)
      @property_hash = @property_hash.merge(spec.compact).merge(ensure: :present, id: outcome['id'])
    end
    @property_flush.clear
  rescue PuppetX::PeFailover::Error => e
    raise Puppet::Error, "pe_failover_node_group[#{resource[:name]}]: #{e.message}"
  end

  private

  # Every property the resource manages, as it should be (nil: unmanaged).
  def spec
    values = self.class.managed.to_h { |p| [p, resource.should(p)] }
    values[:rule] = Array(values[:rule]) unless values[:rule].nil?
    values.merge(name: resource[:name])
  end
end
