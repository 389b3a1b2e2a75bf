# frozen_string_literal: true

require 'puppet/util/feature'
require_relative '../../puppet_x/pe_failover/native'

# True where the pe_failover native extension loads (MRI with the compiled
# `.so` for its Ruby version); false under JRuby (Puppet Server) or when it
# was not built. `PuppetX::PeFailover::NativeLoader.unavailable_reason` says why.
Puppet.features.add(:pe_failover_native) do
  PuppetX::PeFailover::NativeLoader.available?
end
