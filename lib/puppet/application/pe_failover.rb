# frozen_string_literal: true

require 'puppet/application/face_base'

# `puppet pe_failover ACTION`: see lib/puppet/face/pe_failover.rb.
#
# Face actions return data; this application only adds the exit status: 1
# when the result says something is wrong (`healthy` or `ok` false), so
# monitoring can call `puppet pe_failover status` and check `$?`, whatever
# `--render-as` prints.
class Puppet::Application::Pe_failover < Puppet::Application::FaceBase # rubocop:disable Naming/ClassAndModuleCamelCase
  # Keeps the action's result for {#main}'s exit status.
  def render(result, args_and_options)
    @pe_failover_result = result
    super
  end

  # Runs the action; exits 1 when its result is unhealthy or not ok.
  def main
    super
  rescue SystemExit => e
    raise unless e.success? && @pe_failover_result.is_a?(Hash)
    raise if @pe_failover_result.fetch('healthy', true) && @pe_failover_result.fetch('ok', true)

    exit(1)
  end
end
