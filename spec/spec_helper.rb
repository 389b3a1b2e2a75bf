# frozen_string_literal: true

# rspec-puppet setup without network access: the module under test and
# Debian's puppetlabs-stdlib are linked into spec/fixtures/modules.
require 'fileutils'
require 'rspec-puppet'
require 'rspec-puppet-facts'
include RspecPuppetFacts # rubocop:disable Style/MixinUsage

FIXTURES = File.expand_path('fixtures', __dir__)
MODULES = File.join(FIXTURES, 'modules')
STDLIB_CANDIDATES = %w[/usr/share/puppet/modules/stdlib /usr/share/puppet/modules.available/puppetlabs-stdlib].freeze

FileUtils.mkdir_p(MODULES)
{
  'pe_failover' => File.expand_path('..', __dir__),
  'stdlib' => STDLIB_CANDIDATES.find { |d| File.directory?(d) },
}.each do |name, target|
  raise "puppetlabs-stdlib not found (apt-get install puppet-module-puppetlabs-stdlib)" if target.nil?

  link = File.join(MODULES, name)
  next if File.symlink?(link) && File.readlink(link) == target

  FileUtils.rm_rf(link)
  File.symlink(target, link)
end

require_relative 'support/manifest_oracle'
require_relative 'spec_helper_local' if File.exist?(File.join(__dir__, 'spec_helper_local.rb'))

RSpec.configure do |c|
  c.module_path = MODULES
  c.manifest_dir = File.join(FIXTURES, 'manifests')
  FileUtils.mkdir_p(c.manifest_dir)
  c.default_facts = { 'networking' => { 'fqdn' => 'a.example.com' } }
  c.strict_variables = true
  c.disable_monkey_patching!
  c.order = :random
end
