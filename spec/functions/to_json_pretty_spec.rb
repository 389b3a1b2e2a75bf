# frozen_string_literal: true

require 'spec_helper'
require 'json'

RSpec.describe 'pe_failover::to_json_pretty' do
  it 'renders a hash in the order it was written, two-space indented, with a final newline' do
    data = { 'role' => 'active', 'ca' => { 'max_delete_share' => 0.1, 'keep_snapshots' => 10 }, 'replicas' => [{ 'host' => 'b' }] }
    expect(subject).to run.with_params(data).and_return(<<~JSON)
      {
        "role": "active",
        "ca": {
          "max_delete_share": 0.1,
          "keep_snapshots": 10
        },
        "replicas": [
          {
            "host": "b"
          }
        ]
      }
    JSON
  end

  it 'round-trips strings that need escaping, booleans and undef' do
    data = { 'quote' => "a\"b\\c\nd", 'yes' => true, 'no' => false, 'nothing' => nil }
    out = subject.execute(data)
    expect(JSON.parse(out)).to eq(data)
  end

  it 'refuses what JSON cannot hold' do
    expect(subject).to run.with_params(:sym).and_raise_error(ArgumentError, %r{expects a Data value})
  end
end
