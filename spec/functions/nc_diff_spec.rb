# frozen_string_literal: true

require 'spec_helper'
require 'json'

RSpec.describe 'pe_failover::nc_diff' do
  let(:fixtures) { File.expand_path('../fixtures/nc', __dir__) }
  let(:master1) { JSON.parse(File.read(File.join(fixtures, 'ncio-pe2016-groups-master1.min.json'))) }
  let(:master2) { JSON.parse(File.read(File.join(fixtures, 'ncio-pe2016-groups-master2-transformed.json'))) }
  let(:root_id) { '00000000-0000-4000-8000-000000000000' }

  def group(id, name, extra = {})
    { 'id' => id, 'parent' => '00000000-0000-4000-8000-000000000000', 'name' => name, 'environment' => 'production',
      'environment_trumps' => false, 'classes' => {}, 'variables' => {} }.merge(extra)
  end

  it 'finds exactly the groups ncio rewrote between the real master1 and master2 dumps' do
    result = subject.execute(master1, master2)
    expect(result['added']).to eq([])
    expect(result['removed']).to eq([])
    changed = result['changed'].to_h { |c| [c['name'], c['fields']] }
    expect(changed).to eq(
      'PE ActiveMQ Broker' => ['rule'], 'PE Certificate Authority' => ['rule'], 'PE Console' => ['rule'],
      'PE Infrastructure' => ['classes'], 'PE Master' => ['rule'], 'PE Orchestrator' => ['rule'],
      'PE PuppetDB' => ['rule']
    )
    expect(result['unchanged']).to eq(master1.size - 7)
    expect(result['in_sync']).to be(false)
    expect(result['from_digest']).not_to eq(result['to_digest'])
  end

  it 'reports equal sets as in sync, whatever the order, read-only keys and null parameters' do
    a = [group(root_id, 'All Nodes'), group('aaaaaaaa-0000-4000-8000-000000000001', 'a', 'classes' => { 'c' => {} })]
    b = [group('aaaaaaaa-0000-4000-8000-000000000001', 'a', 'classes' => { 'c' => {} }, 'serial_number' => 4),
         group(root_id, 'All Nodes')]
    digest = subject.execute(a, a)['from_digest']
    is_expected.to run.with_params(a, b).and_return(
      'added' => [], 'removed' => [], 'changed' => [], 'unchanged' => 2, 'in_sync' => true,
      'from_digest' => digest, 'to_digest' => digest
    )
    with_null = [b[0].merge('classes' => { 'c' => { 'p' => nil } }), b[1]]
    expect(subject.execute(a, with_null)['in_sync']).to be(true)
  end

  it 'names added, removed and changed groups with the fields that differ' do
    from = [group(root_id, 'All Nodes'), group('aaaaaaaa-0000-4000-8000-000000000001', 'a'),
            group('bbbbbbbb-0000-4000-8000-000000000002', 'b')]
    to = [group(root_id, 'All Nodes'), group('aaaaaaaa-0000-4000-8000-000000000001', 'a2', 'variables' => { 'v' => 1 }),
          group('cccccccc-0000-4000-8000-000000000003', 'c')]
    result = subject.execute(from, to)
    expect(result['added']).to eq([{ 'id' => 'cccccccc-0000-4000-8000-000000000003', 'name' => 'c' }])
    expect(result['removed']).to eq([{ 'id' => 'bbbbbbbb-0000-4000-8000-000000000002', 'name' => 'b' }])
    expect(result['changed']).to eq([{ 'id' => 'aaaaaaaa-0000-4000-8000-000000000001', 'name' => 'a2', 'fields' => %w[name variables] }])
    expect(result['unchanged']).to eq(1)
  end

  it 'fails naming the side and the group of a malformed group' do
    is_expected.to run.with_params([group(root_id, 'All Nodes', 'purge_behavior' => 'none')], [])
                      .and_raise_error(Puppet::Error, %r{pe_failover::nc_diff: from: group #0 "All Nodes".*purge_behavior})
  end

  it 'checks its argument types' do
    is_expected.to run.with_params([], 'x').and_raise_error(ArgumentError, %r{expects an Array value})
  end
end
