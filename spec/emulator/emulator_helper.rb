# frozen_string_literal: true

require 'fileutils'
require 'json'
require 'tmpdir'
require_relative '../support/test_ca'
require_relative '../support/nc_emulator'
require_relative '../support/nc_emulator_process'

# Shared helpers for the emulator's own specs (spec/emulator/*_spec.rb).
module EmulatorSpec
  ROOT = '00000000-0000-4000-8000-000000000000'
  GROUPS = '/classifier-api/v1/groups'
  FIXTURE_MIN = PeFailoverSpec::NcEmulatorProcess.fixture('ncio-pe2016-groups-master1.min.json')
  FIXTURE_PRETTY = PeFailoverSpec::NcEmulatorProcess.fixture('ncio-pe2016-groups-master1.pretty.json')
  FIXTURE_TRANSFORMED = PeFailoverSpec::NcEmulatorProcess.fixture('ncio-pe2016-groups-master2-transformed.json')
  ISO_MS = /\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\z/.freeze

  # The class catalog most specs run against.
  CATALOG = {
    'production' => {
      'apache' => { 'keepalive_timeout' => 15, 'docroot' => nil, 'options' => {} },
      'ntp' => { 'servers' => [] },
      'ssl' => {},
      'motd' => { 'message' => 'hi' }
    },
    'development' => {
      'apache' => { 'keepalive_timeout' => 15 },
      'ntp' => { 'servers' => [] }
    }
  }.freeze

  def self.fixture_groups
    JSON.parse(File.read(FIXTURE_MIN))
  end

  # Class-level: one emulator process for the whole example group, reset
  # before every example, its log printed when an example fails.
  module ProcessHelpers
    def with_emulator(**options)
      before(:all) do
        @tmpdir = Dir.mktmpdir('nc-emulator-spec')
        @ca = PeFailoverSpec::TestCA.create(File.join(@tmpdir, 'ca'))
        @emulator = PeFailoverSpec::NcEmulatorProcess.new(dir: File.join(@tmpdir, 'emu'), ca: @ca, **options).start
      end
      after(:all) do
        @emulator&.stop
        FileUtils.rm_rf(@tmpdir) if @tmpdir
      end
      before { @emulator.reset! }
      after { |example| warn(@emulator.log_contents.lines.last(30).join) if example.exception }
    end
  end

  # Example-level helpers.
  module Helpers
    def emulator
      @emulator
    end

    # The allowlisted client; rebuilt when a restart moved the emulator's port.
    def client
      @client = nil if @client && @client.port != emulator.port
      @client ||= emulator.client
    end

    def group_body(name, parent: ROOT, classes: {}, **extra)
      { 'name' => name, 'parent' => parent, 'classes' => classes }.merge(extra.transform_keys(&:to_s))
    end

    # Creates a group through POST /v1/groups and returns its id.
    def create_group(name, **options)
      response = client.post(GROUPS, group_body(name, **options))
      raise "create #{name} failed: #{response.status} #{response.body}" unless response.status == 303

      response['location'].split('/').last
    end

    def fetch_group(id)
      response = client.get("#{GROUPS}/#{id}")
      raise "GET #{id} failed: #{response.status} #{response.body}" unless response.status == 200

      response.json
    end

    def all_groups
      client.get(GROUPS).json
    end

    def writes
      emulator.stats['writes']
    end
  end
end
