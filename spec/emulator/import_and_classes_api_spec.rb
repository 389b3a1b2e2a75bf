# frozen_string_literal: true

require 'stringio'
require_relative '../support/test_ca'
require_relative '../support/nc_emulator'
require_relative '../support/nc_emulator_process'
require_relative 'emulator_helper'

# import-hierarchy, update-classes, class and environment lookups, validate,
# pinning and group-children over real HTTPS (docs/nc-api.md §3.7-§3.12).
RSpec.describe 'NC emulator: import, classes, environments' do
  extend EmulatorSpec::ProcessHelpers
  include EmulatorSpec::Helpers
  with_emulator(classes: EmulatorSpec::CATALOG)

  let(:root) { EmulatorSpec::ROOT }
  let(:groups_path) { EmulatorSpec::GROUPS }
  let(:import_path) { '/classifier-api/v1/import-hierarchy' }
  let(:root_group) do
    { 'id' => root, 'parent' => root, 'name' => 'All Nodes', 'environment' => 'production',
      'environment_trumps' => false, 'rule' => ['and', ['~', 'name', '.*']], 'classes' => {}, 'variables' => {} }
  end
  let(:a_id) { 'aaaaaaaa-0000-4000-8000-000000000001' }
  let(:b_id) { 'bbbbbbbb-0000-4000-8000-000000000002' }
  let(:c_id) { 'cccccccc-0000-4000-8000-000000000003' }

  def member(id, name, parent, **extra)
    { 'id' => id, 'parent' => parent, 'name' => name, 'environment' => 'production', 'environment_trumps' => false,
      'classes' => {}, 'variables' => {} }.merge(extra.transform_keys(&:to_s))
  end

  def expect_unchanged(before)
    expect(all_groups).to eq(before)
  end

  describe 'POST /v1/import-hierarchy' do
    it 'replaces every group (204, empty body) and keeps the given ids' do
      old = create_group('will vanish')
      payload = [root_group, member(a_id, 'A', root, classes: { 'ntp' => { 'servers' => ['x'] } }),
                 member(b_id, 'B', a_id, description: 'b')]
      response = client.post(import_path, payload)
      expect([response.status, response.body]).to eq([204, ''])
      listed = all_groups
      expect(listed.map { |g| g['id'] }).to eq([a_id, b_id, root].sort)
      expect(listed.map { |g| g['id'] }).not_to include(old)
      expect(fetch_group(b_id)).to include('description' => 'b', 'serial_number' => 1)
    end

    it 'accepts GET /v1/groups output unchanged (read-only keys ignored) and keeps unchanged serials' do
      id = create_group('kept', classes: { 'ssl' => {} })
      client.post("#{groups_path}/#{id}", { 'variables' => { 'v' => 1 } })
      dump = all_groups
      expect(dump.find { |g| g['id'] == id }['serial_number']).to eq(2)
      expect(client.post(import_path, dump).status).to eq(204)
      expect(all_groups).to eq(dump)
    end

    it 'accepts a chunked (streamed) request body, as ncio sends it' do
      payload = JSON.generate([root_group, member(a_id, 'Streamed', root)])
      response = client.post(import_path, StringIO.new(payload))
      expect(response.status).to eq(204)
      expect(fetch_group(a_id)['name']).to eq('Streamed')
    end

    it 'bumps the serial of a group the import changes' do
      id = create_group('changing')
      dump = all_groups
      dump.find { |g| g['id'] == id }['variables'] = { 'new' => true }
      client.post(import_path, dump)
      expect(fetch_group(id)['serial_number']).to eq(2)
    end

    it 'is all-or-nothing: a failing import changes nothing' do
      create_group('survivor')
      before = all_groups
      bad_payloads = [
        [root_group, member(a_id, 'A', root), member(b_id, 'B', 'dddddddd-0000-4000-8000-000000000009')],
        [root_group, member(a_id, 'A', root), member(a_id, 'A again', root)],
        [root_group, member(a_id, 'same', root), member(b_id, 'same', root)],
        [root_group, member(a_id, 'A', root).merge('purge_behavior' => 'none')],
        [member(a_id, 'no root', root)],
        { 'not' => 'an array' }
      ]
      bad_payloads.each do |payload|
        response = client.post(import_path, payload)
        expect([400, 422]).to include(response.status), payload.inspect
      end
      expect(client.post(import_path, '[{"broken"').json['kind']).to eq('malformed-request')
      expect_unchanged(before)
    end

    it 'reports groups whose parent is not in the payload as unreachable' do
      stray = member(b_id, 'Stray', 'dddddddd-0000-4000-8000-000000000009')
      response = client.post(import_path, [root_group, member(a_id, 'A', root), stray])
      expect(response.status).to eq(422)
      expect(response.json['kind']).to eq('unreachable-groups')
      expect(response.json['msg']).to eq('The group named "Stray" is not reachable from the root of the hierarchy.')
      expect(response.json['details']).to eq([stray])
    end

    it 'reports a detached cycle as unreachable groups and a loop through the root as a cycle' do
      island = [member(a_id, 'Island A', b_id), member(b_id, 'Island B', a_id)]
      response = client.post(import_path, [root_group] + island)
      expect(response.json['kind']).to eq('unreachable-groups')
      expect(response.json['msg']).to eq('The groups named "Island A" and "Island B" are not reachable from the root of the hierarchy.')

      looped_root = root_group.merge('parent' => b_id)
      response = client.post(import_path, [looped_root, member(a_id, 'A', root), member(b_id, 'B', a_id)])
      expect(response.status).to eq(422)
      expect(response.json['kind']).to eq('inheritance-cycle')
      expect(response.json['msg']).to start_with('Detected group inheritance cycle: All Nodes -> B -> A -> All Nodes.')
    end

    it 'reports duplicate ids with the groups_pkey constraint' do
      response = client.post(import_path, [root_group, member(a_id, 'A', root), member(a_id, 'A2', root)])
      expect(response.status).to eq(422)
      expect(response.json['details']).to eq('constraintName' => 'groups_pkey', 'conflict' => { 'id' => a_id })
      expect(response.json['msg']).to end_with("A group with id = #{a_id} already exists.")
    end

    it 'reports a duplicate (name, environment) in the payload' do
      response = client.post(import_path, [root_group, member(a_id, 'twin', root), member(b_id, 'twin', root)])
      expect(response.json['details']['constraintName']).to eq('groups_name_environment_name_idx')
    end

    it 'requires every key except description, rule and config_data, reporting per-group errors' do
      incomplete = member(a_id, 'A', root).reject { |k, _| k == 'environment_trumps' }
      good = member(b_id, 'B', root)
      response = client.post(import_path, [root_group, incomplete, good])
      expect(response.status).to eq(400)
      expect(response.json['kind']).to eq('schema-violation')
      expect(response.json['details']['submitted']).to eq([incomplete])
      expect(response.json['details']['error']).to eq([{ 'environment_trumps' => 'missing-required-key' }])
    end

    it 'refuses a deleted key by default' do
      response = client.post(import_path, [root_group.merge('deleted' => {})])
      expect(response.json['details']['error']).to eq([{ 'deleted' => 'disallowed-key' }])
    end

    it 'creates placeholders for missing classes, shown as deleted until update-classes brings them' do
      payload = [root_group, member(a_id, 'A', root, classes: { 'future' => { 'p' => 1 }, 'apache' => { 'later' => 2 } })]
      expect(client.post(import_path, payload).status).to eq(204)
      expect(fetch_group(a_id)['deleted']).to eq(
        'future' => { 'puppetlabs.classifier/deleted' => true },
        'apache' => { 'puppetlabs.classifier/deleted' => false,
                      'later' => { 'puppetlabs.classifier/deleted' => true, 'value' => 2 } }
      )
      expect(client.get('/classifier-api/v1/environments/production/classes/future').status).to eq(404)
      catalog = EmulatorSpec::CATALOG.merge(
        'production' => EmulatorSpec::CATALOG['production'].merge('future' => { 'p' => nil },
                                                                  'apache' => { 'later' => 0 })
      )
      emulator.stage_classes(catalog)
      client.post('/classifier-api/v1/update-classes')
      expect(fetch_group(a_id).key?('deleted')).to be(false)
    end
  end

  describe 'POST /v1/update-classes and the class lookups' do
    it 'answers 201 with an empty body and records the time' do
      expect(client.get('/classifier-api/v1/last-class-update').json).to eq('last_update' => nil)
      response = client.post('/classifier-api/v1/update-classes')
      expect([response.status, response.body]).to eq([201, ''])
      expect(client.get('/classifier-api/v1/last-class-update').json['last_update']).to match(EmulatorSpec::ISO_MS)
    end

    it 'swaps in the staged catalog: new classes appear, vanished ones are marked deleted' do
      id = create_group('uses motd', classes: { 'motd' => { 'message' => 'm' }, 'apache' => { 'docroot' => '/x' } })
      staged = { 'production' => { 'apache' => { 'keepalive_timeout' => 15 }, 'newclass' => { 'size' => 3 } } }
      emulator.stage_classes(staged)
      expect(client.get('/classifier-api/v1/environments/production/classes/newclass').status).to eq(404)
      client.post('/classifier-api/v1/update-classes')
      expect(client.get('/classifier-api/v1/environments/production/classes/newclass').json)
        .to eq('name' => 'newclass', 'environment' => 'production', 'parameters' => { 'size' => 3 })
      expect(client.get('/classifier-api/v1/environments/production/classes/motd').status).to eq(404)
      group = fetch_group(id)
      expect(group['classes']).to eq('motd' => { 'message' => 'm' }, 'apache' => { 'docroot' => '/x' })
      expect(group['deleted']).to eq(
        'motd' => { 'puppetlabs.classifier/deleted' => true },
        'apache' => { 'puppetlabs.classifier/deleted' => false,
                      'docroot' => { 'puppetlabs.classifier/deleted' => true, 'value' => '/x' } }
      )
      expect(group['serial_number']).to eq(1)
    end

    it 'refreshes a single environment with ?environment=' do
      emulator.stage_classes({ 'production' => {}, 'development' => {} })
      client.post('/classifier-api/v1/update-classes?environment=development')
      expect(client.get('/classifier-api/v1/environments/development/classes').json).to eq([])
      expect(client.get('/classifier-api/v1/environments/production/classes').json.map { |c| c['name'] })
        .to eq(%w[apache motd ntp ssl])
    end

    it 'lists classes of every environment and of one' do
      all = client.get('/classifier-api/v1/classes').json
      expect(all).to include('name' => 'ntp', 'environment' => 'development', 'parameters' => { 'servers' => [] })
      expect(all.size).to eq(6)
      prod = client.get('/classifier-api/v1/environments/production/classes').json
      expect(prod.find { |c| c['name'] == 'apache' }['parameters'])
        .to eq('keepalive_timeout' => 15, 'docroot' => nil, 'options' => {})
      expect(client.get('/classifier-api/v1/environments/nosuch/classes').json).to eq([])
    end

    it 'answers 404 with an empty body for an unknown class' do
      response = client.get('/classifier-api/v1/environments/production/classes/nosuch')
      expect([response.status, response.body]).to eq([404, ''])
    end
  end

  describe 'environments' do
    it 'lists environments, including ones created implicitly by groups' do
      create_group('in staging', environment: 'staging')
      expect(client.get('/classifier-api/v1/environments').json).to eq(
        %w[development production staging].map { |n| { 'name' => n, 'sync_succeeded' => true } }
      )
      expect(client.get('/classifier-api/v1/environments/staging').json).to eq('name' => 'staging', 'sync_succeeded' => true)
    end

    it 'answers 404 with an empty body for an unknown environment' do
      response = client.get('/classifier-api/v1/environments/nosuch')
      expect([response.status, response.body]).to eq([404, ''])
    end

    it 'creates one with PUT (201), then answers 200' do
      expect(client.put('/classifier-api/v1/environments/qa').status).to eq(201)
      expect(client.put('/classifier-api/v1/environments/qa').status).to eq(200)
      expect(client.get('/classifier-api/v1/environments/qa').status).to eq(200)
    end
  end

  describe 'POST /v1/validate/group' do
    it 'answers 200 with the group and defaults, writing nothing' do
      response = client.post('/classifier-api/v1/validate/group', group_body('would be', classes: { 'ntp' => {} }))
      expect(response.status).to eq(200)
      expect(response.json).to include('name' => 'would be', 'environment' => 'production', 'environment_trumps' => false,
                                       'variables' => {}, 'classes' => { 'ntp' => {} })
      expect(response.json['id']).to match(/\A\h{8}-\h{4}-4\h{3}-[89ab]\h{3}-\h{12}\z/)
      expect(all_groups.size).to eq(1)
      expect(writes).to eq(0)
    end

    it 'gives the same 400 and 422 errors as create' do
      expect(client.post('/classifier-api/v1/validate/group', group_body('x', bogus: 1)).json['kind']).to eq('schema-violation')
      expect(client.post('/classifier-api/v1/validate/group', group_body('x', classes: { 'no' => {} })).json['kind'])
        .to eq('missing-referents')
      expect(client.post('/classifier-api/v1/validate/group',
                         group_body('x', parent: 'eeeeeeee-0000-4000-8000-000000000000')).json['kind']).to eq('missing-parent')
    end
  end

  describe 'pinning' do
    it 'pins into a top-level or, ignores repeats, unpins, and counts as a change' do
      id = create_group('pinned', rule: ['and', ['=', %w[fact os family], 'RedHat']])
      expect(client.post("#{groups_path}/#{id}/pin?nodes=a.example,b.example").status).to eq(204)
      expect(client.post("#{groups_path}/#{id}/pin", { 'nodes' => ['b.example', 'c.example'] }).status).to eq(204)
      group = fetch_group(id)
      expect(group['rule']).to eq(['or', ['and', ['=', %w[fact os family], 'RedHat']],
                                   ['=', 'name', 'a.example'], ['=', 'name', 'b.example'], ['=', 'name', 'c.example']])
      expect(group['serial_number']).to eq(3)
      client.post("#{groups_path}/#{id}/unpin", { 'nodes' => 'b.example' })
      expect(fetch_group(id)['rule'].last).to eq(['=', 'name', 'c.example'])
      unpinned = client.post('/classifier-api/v1/commands/unpin-from-all', { 'nodes' => ['a.example', 'c.example'] })
      expect(unpinned.status).to eq(200)
      expect(unpinned.json).to eq('nodes' => [{ 'name' => 'a.example', 'groups' => [{ 'id' => id, 'name' => 'pinned',
                                                                                    'environment' => 'production' }] },
                                              { 'name' => 'c.example', 'groups' => [{ 'id' => id, 'name' => 'pinned',
                                                                                    'environment' => 'production' }] }])
      expect(fetch_group(id)['rule']).to eq(['or', ['and', ['=', %w[fact os family], 'RedHat']]])
    end

    it 'creates a rule for a group without one and removes it when the last pin goes' do
      id = create_group('only pins')
      client.post("#{groups_path}/#{id}/pin", { 'nodes' => 'n1' })
      expect(fetch_group(id)['rule']).to eq(['or', ['=', 'name', 'n1']])
      client.post("#{groups_path}/#{id}/unpin?nodes=n1")
      expect(fetch_group(id).key?('rule')).to be(false)
    end

    it 'answers 400 missing-parameters without nodes and schema-violation for other keys' do
      id = create_group('p')
      expect(client.post("#{groups_path}/#{id}/pin").json['kind']).to eq('missing-parameters')
      expect(client.post("#{groups_path}/#{id}/pin", { 'nodes' => 'x', 'extra' => 1 }).json['kind']).to eq('schema-violation')
      expect(client.post("#{groups_path}/#{id}/pin", '{nope').json['kind']).to eq('malformed-request')
      expect(client.post("#{groups_path}/dddddddd-0000-4000-8000-000000000009/pin?nodes=x").status).to eq(404)
    end
  end

  describe 'GET /v1/group-children/<id>' do
    it 'nests descendants to the requested depth' do
      a = create_group('ga')
      b = create_group('gb', parent: a)
      tree = client.get("/classifier-api/v1/group-children/#{a}").json
      expect(tree.size).to eq(1)
      expect(tree[0]['id']).to eq(a)
      expect(tree[0]['children'].map { |c| c['id'] }).to eq([b])
      expect(tree[0]['immediate_child_count']).to eq(1)
      expect(client.get("/classifier-api/v1/group-children/#{a}?depth=0").json[0]['children']).to eq([])
      expect(client.get('/classifier-api/v1/group-children/nope').json['kind']).to eq('malformed-uuid')
    end
  end
end
