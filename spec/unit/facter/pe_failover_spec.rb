# frozen_string_literal: true

require 'spec_helper'
require 'facter'
require 'rbconfig'

RSpec.describe 'the pe_failover fact' do
  let(:fact_file) { File.expand_path('../../../lib/facter/pe_failover.rb', __dir__) }

  before do
    Facter.clear
    load fact_file
  end

  after { Facter.clear }

  it 'reports the Ruby running Puppet and the lib directory holding the CLI' do
    value = Facter.fact(:pe_failover).value
    expect(value).to eq('ruby' => RbConfig.ruby, 'libdir' => File.expand_path('../../../lib', __dir__))
    expect(File).to exist(File.join(value['libdir'], 'facter', 'pe_failover.rb'))
    expect(File).to exist(File.join(value['libdir'], 'puppet_x', 'pe_failover', 'native.rb'))
  end

  it 'never raises: a failure leaves the fact out' do
    allow(RbConfig).to receive(:ruby).and_raise(RuntimeError, 'boom')
    expect(Facter.fact(:pe_failover).value).to be_nil
  end
end
