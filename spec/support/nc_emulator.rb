#!/usr/bin/env ruby
# frozen_string_literal: true

# PE Node Classifier API emulator (test and demo support, not shipped).
#
# Run it as a process:
#
#   ruby spec/support/nc_emulator.rb --port 0 --cert nc.pem --key nc.key \
#     --cacert ca.pem --allowlist allowlist --ready-file port.txt [--seed groups.json]
#
# `--help` lists every flag. Required as a library it only loads the model
# classes (PeFailoverSpec::NcEmulator::Store and friends).

require_relative 'nc_emulator/errors'
require_relative 'nc_emulator/rules'
require_relative 'nc_emulator/schema'
require_relative 'nc_emulator/catalog'
require_relative 'nc_emulator/hierarchy'
require_relative 'nc_emulator/referents'
require_relative 'nc_emulator/store'
require_relative 'nc_emulator/status'
require_relative 'nc_emulator/api'

if File.expand_path($PROGRAM_NAME) == File.expand_path(__FILE__)
  require_relative 'nc_emulator/cli'
  exit PeFailoverSpec::NcEmulator::CLI.new(ARGV).run
end
