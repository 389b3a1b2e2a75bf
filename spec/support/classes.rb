# frozen_string_literal: true

require 'json'

module PeFailoverSpec
  # Shared data of the class specs (spec/classes).
  module Classes
    # Real ed25519 public keys (ssh-keygen output), used as the active's
    # transfer key and the passives' host keys.
    TRANSFER_KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDA4tlMBKkZjpzsHMsTKSGLotlVAVFV0Z/emA9Gou1Sk pe_failover@a.example.com'
    HOST_KEY_B = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOTEaZGiwxmzYYkRWGET38stUxqm8hGgSZ8xFlGKkOw5'
    HOST_KEY_C = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH9jI2VDVNZacs9+eG6pc0Hd1MexEBDo3lnoSPh65bo2'

    RUBY = '/opt/puppetlabs/puppet/bin/ruby'
    LIBDIR = '/etc/puppetlabs/code/environments/production/modules/pe_failover/lib'

    NOLOGIN = { 'RedHat' => '/sbin/nologin', 'Suse' => '/sbin/nologin', 'Debian' => '/usr/sbin/nologin' }.freeze

    WRAPPER = <<~SH
      #!/bin/sh
      # Managed by Puppet (pe_failover): the pe_failover command line.
      exec #{RUBY} -I #{LIBDIR} #{LIBDIR}/puppet_x/pe_failover/cli.rb "$@"
    SH

    module_function

    # The facts of one supported OS plus the module's own fact.
    def facts(os_facts)
      os_facts.merge(pe_failover: { 'ruby' => RUBY, 'libdir' => LIBDIR })
    end

    # The configuration file's content, parsed.
    def config(catalogue, path = '/opt/pe_failover/etc/config.json')
      JSON.parse(catalogue.resource('File', path)[:content])
    end

    # Every File resource of a catalogue, path => ensure.
    def files(catalogue)
      catalogue.resources.select { |r| r.type == 'File' }.to_h { |r| [r.title, r[:ensure]] }
    end
  end
end
