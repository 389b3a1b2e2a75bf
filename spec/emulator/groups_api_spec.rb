# frozen_string_literal: true

require_relative '../support/test_ca'
require_relative '../support/nc_emulator'
require_relative '../support/nc_emulator_process'
require_relative 'emulator_helper'

# Group CRUD over real HTTPS (docs/nc-api.md §2, §3.1-§3.6, §4).
RSpec.describe 'NC emulator: groups API' do
  extend EmulatorSpec::ProcessHelpers
  include EmulatorSpec::Helpers
  with_emulator(classes: EmulatorSpec::CATALOG)

  let(:root) { EmulatorSpec::ROOT }
  let(:groups_path) { EmulatorSpec::GROUPS }

  describe 'GET /v1/groups' do
    it 'starts with the root group only, in the documented shape' do
      response = client.get(groups_path)
      expect(response.status).to eq(200)
      expect(response['content-type']).to eq('application/json')
      expect(response.json).to eq([{
                                    'parent' => root, 'environment_trumps' => false, 'name' => 'All Nodes',
                                    'rule' => ['and', ['~', 'name', '.*']], 'variables' => {}, 'id' => root,
                                    'environment' => 'production', 'classes' => {},
                                    'last_edited' => response.json[0]['last_edited'], 'serial_number' => 1
                                  }])
      expect(response.json[0]['last_edited']).to match(EmulatorSpec::ISO_MS)
    end

    it 'returns groups sorted by id and omits description, rule and config_data when unset' do
      ids = Array.new(4) { |i| create_group("g#{i}") }
      listed = all_groups
      expect(listed.map { |g| g['id'] }).to eq(([root] + ids).sort)
      plain = listed.find { |g| g['id'] == ids.first }
      expect(plain.keys).not_to include('description', 'rule', 'config_data', 'deleted')
    end

    it 'pages with limit and offset' do
      ids = ([root] + Array.new(3) { |i| create_group("p#{i}") }).sort
      expect(client.get("#{groups_path}?limit=2").json.map { |g| g['id'] }).to eq(ids[0, 2])
      expect(client.get("#{groups_path}?offset=1&limit=2").json.map { |g| g['id'] }).to eq(ids[1, 2])
      expect(client.get("#{groups_path}?offset=10").json).to eq([])
    end

    it 'rejects a negative or non-numeric limit/offset with 400' do
      %w[limit=-1 offset=abc limit=1.5].each do |q|
        response = client.get("#{groups_path}?#{q}")
        expect(response.status).to eq(400), q
        expect(response.json.keys).to eq(%w[kind msg details])
      end
    end

    it 'shows inherited classes, parameters, variables and the conjoined rule with ?inherited' do
      parent = create_group('parent', classes: { 'apache' => { 'keepalive_timeout' => 5 }, 'ntp' => {} },
                                      variables: { 'a' => 1, 'b' => 2 }, rule: ['=', 'name', 'x'])
      child = create_group('child', parent: parent, classes: { 'apache' => { 'docroot' => '/srv' } },
                                    variables: { 'b' => 3 })
      inherited = client.get("#{groups_path}/#{child}?inherited=true").json
      expect(inherited['classes']).to eq('apache' => { 'keepalive_timeout' => 5, 'docroot' => '/srv' }, 'ntp' => {})
      expect(inherited['variables']).to eq('a' => 1, 'b' => 3)
      expect(inherited['rule']).to eq(['and', ['and', ['~', 'name', '.*']], ['=', 'name', 'x']])
      expect(client.get("#{groups_path}/#{child}?inherited=false").json['classes']).to eq('apache' => { 'docroot' => '/srv' })
      expect(client.get("#{groups_path}/#{child}?inherited=0").json['variables']).to eq('b' => 3)
      listed = client.get("#{groups_path}?inherited=1").json.find { |g| g['id'] == child }
      expect(listed['classes']['ntp']).to eq({})
    end
  end

  describe 'GET /v1/groups/<id>' do
    it '404s a missing group with the request path in details' do
      id = '4a1b4eb5-3f64-4d3c-9a2b-0f1a2b3c4d5e'
      response = client.get("#{groups_path}/#{id}")
      expect(response.status).to eq(404)
      expect(response.json).to eq('kind' => 'not-found', 'msg' => 'The resource could not be found.',
                                  'details' => "#{groups_path}/#{id}")
    end

    it 'answers 400 malformed-uuid for a bad or upper-case id' do
      ['not-a-uuid', '4A1B4EB5-3F64-4D3C-9A2B-0F1A2B3C4D5E'].each do |bad|
        response = client.get("#{groups_path}/#{bad}")
        expect(response.status).to eq(400)
        expect(response.json).to eq('kind' => 'malformed-uuid',
                                    'msg' => "The group id in the request's URI is not a valid UUID.", 'details' => bad)
      end
    end
  end

  describe 'POST /v1/groups' do
    it 'answers 303 with a path-only Location and an empty body, filling in defaults' do
      response = client.post(groups_path, group_body('web', id: 'ignored', rule: ['=', 'name', 'w1']))
      expect(response.status).to eq(303)
      expect(response.body).to eq('')
      expect(response['location']).to match(%r{\A/classifier-api/v1/groups/[0-9a-f-]{36}\z})
      group = fetch_group(response['location'].split('/').last)
      expect(group).to include('name' => 'web', 'environment' => 'production', 'environment_trumps' => false,
                               'variables' => {}, 'classes' => {}, 'rule' => ['=', 'name', 'w1'], 'serial_number' => 1)
      expect(group['id']).not_to eq('ignored')
    end

    it 'rejects unknown keys with schema-violation and the disallowed-key text' do
      response = client.post(groups_path, group_body('x', purge_behavior: 'all'))
      expect(response.status).to eq(400)
      body = response.json
      expect(body['kind']).to eq('schema-violation')
      expect(body['msg']).to eq('The object(s) in your submitted request did not conform to the schema. ' \
                                'The problem is: ([:purge_behavior disallowed-key])')
      expect(body['details'].keys).to eq(%w[submitted schema error])
      expect(body['details']['error']).to eq('purge_behavior' => 'disallowed-key')
    end

    it 'requires name, parent and classes' do
      response = client.post(groups_path, { 'name' => 'x', 'parent' => root })
      expect(response.status).to eq(400)
      expect(response.json['details']['error']).to eq('classes' => 'missing-required-key')
      expect(response.json['msg']).to end_with('([:classes missing-required-key])')
    end

    it 'insists that environment_trumps is a JSON boolean' do
      response = client.post(groups_path, group_body('x', environment_trumps: 'true'))
      expect(response.status).to eq(400)
      expect(response.json['details']['error']).to eq('environment_trumps' => '(not (instance? java.lang.Boolean "true"))')
    end

    it 'rejects malformed rules with the documented sentence' do
      [[''], ['and'], ['=', 'name'], ['=', 'name', 5], %w[~ name], ['like', 'name', 'x'], ['not', ['=', 'a', 'b'], ['=', 'a', 'c']],
       ['=', ['facts', 'os'], 'x'], ['=', ['fact'], 'x'], 'name'].each do |rule|
        response = client.post(groups_path, group_body('x', rule: rule))
        expect(response.status).to eq(400), rule.inspect
        expect(response.json['msg']).to eq(
          'The object(s) in your submitted request did not conform to the schema. The problem is: ' \
          '([:rule "The rule is malformed. Please consult the group documentation for details on the rule grammar."])'
        )
      end
    end

    it 'accepts the rule shapes found in real PE groups' do
      [['and', ['~', 'name', '.*']], ['or', ['=', 'name', 'master1.puppet.vm']],
       ['and', ['~', ['fact', 'aio_agent_version'], '.+']],
       ['or', ['and', ['=', %w[trusted extensions pp_auth_role], 'pe_compiler']], ['=', 'name', 'pe.example']],
       ['not', ['>=', ['fact', 'processors', 'count'], '4']], ['<', ['fact', 'disks', 0, 'size'], '512']].each_with_index do |rule, i|
        expect(client.post(groups_path, group_body("rule#{i}", rule: rule)).status).to eq(303), rule.inspect
      end
    end

    it 'refuses the read-only deleted key on writes' do
      response = client.post(groups_path, group_body('x', deleted: {}))
      expect(response.status).to eq(400)
      expect(response.json['details']['error']).to eq('deleted' => 'disallowed-key')
    end

    it 'answers 400 malformed-request for a body that is not JSON' do
      response = client.post(groups_path, '{"name": ')
      expect(response.status).to eq(400)
      expect(response.json['kind']).to eq('malformed-request')
      expect(response.json['msg']).to eq('The body of your request is not valid JSON.')
      expect(response.json['details']).to include('body' => '{"name": ')
      expect(response.json['details']['error']).to be_a(String)
    end

    it 'answers 400 malformed-uuid for a bad parent' do
      response = client.post(groups_path, group_body('x', parent: 'nope'))
      expect(response.status).to eq(400)
      expect(response.json).to eq('kind' => 'malformed-uuid', 'msg' => "The group's parent id is not a valid UUID.",
                                  'details' => 'nope')
    end

    it 'answers 422 missing-parent for an unknown parent, with the group as details' do
      parent = '11111111-2222-4333-8444-555555555555'
      response = client.post(groups_path, group_body('orphan', parent: parent))
      expect(response.status).to eq(422)
      expect(response.json['kind']).to eq('missing-parent')
      expect(response.json['msg']).to eq("The parent group #{parent} does not exist.")
      expect(response.json['details']).to include('name' => 'orphan', 'parent' => parent)
    end

    it 'enforces (name, environment) uniqueness with PE column names' do
      create_group('dup')
      expect(client.post(groups_path, group_body('dup', environment: 'development')).status).to eq(303)
      response = client.post(groups_path, group_body('dup'))
      expect(response.status).to eq(422)
      expect(response.json).to eq(
        'kind' => 'uniqueness-violation',
        'msg' => 'Could not complete the request because it violates a group uniqueness constraint. ' \
                 'A group with name = dup, environment_name = production already exists.',
        'details' => { 'constraintName' => 'groups_name_environment_name_idx',
                       'conflict' => { 'name' => 'dup', 'environment_name' => 'production' } }
      )
      expect(client.post(groups_path, group_body('Dup')).status).to eq(303) # case-sensitive
    end

    it 'answers 422 missing-referents for a missing class, parameter or class in the wrong environment' do
      response = client.post(groups_path, group_body('x', classes: { 'nosuch' => {}, 'apache' => { 'bogus' => 1 } }))
      expect(response.status).to eq(422)
      body = response.json
      expect(body['kind']).to eq('missing-referents')
      expect(body['details']).to contain_exactly(
        { 'kind' => 'missing-class', 'missing' => 'nosuch', 'environment' => 'production', 'group' => 'x', 'defined_by' => 'x' },
        { 'kind' => 'missing-parameter', 'missing' => %w[apache bogus], 'environment' => 'production', 'group' => 'x',
          'defined_by' => 'x' }
      )
      expect(body['msg']).to eq(
        'The group being edited or created makes reference to the following missing classes and class parameters: ' \
        '"nosuch" class in the "production" environment and "apache" class\'s "bogus" parameter in the "production" ' \
        'environment. See the `details` key for complete information on where each reference to a missing class or ' \
        'class parameter originated.'
      )
      wrong_env = client.post(groups_path, group_body('y', environment: 'development', classes: { 'motd' => {} }))
      expect(wrong_env.status).to eq(422)
      expect(wrong_env.json['msg']).to start_with('The group being edited or created makes reference to the following ' \
                                                   'missing classes: "motd" class in the "development" environment.')
    end

    it 'checks inherited classes in the child\'s own environment and names the defining group' do
      parent = create_group('base', classes: { 'motd' => { 'message' => 'x' } })
      response = client.post(groups_path, group_body('dev child', parent: parent, environment: 'development'))
      expect(response.status).to eq(422)
      expect(response.json['details']).to eq([{ 'kind' => 'missing-class', 'missing' => 'motd', 'environment' => 'development',
                                                'group' => 'dev child', 'defined_by' => 'base' }])
    end

    it 'does not validate config_data' do
      id = create_group('data', config_data: { 'anything::at_all' => { 'k' => [1, { 'x' => nil }] }, 'empty' => {} })
      expect(fetch_group(id)['config_data']).to eq('anything::at_all' => { 'k' => [1, { 'x' => nil }] })
    end

    it 'keeps any JSON value in parameters and variables' do
      params = { 'keepalive_timeout' => 1.5, 'docroot' => nil, 'options' => { 'a' => [true, false, nil, 'x', 3] } }
      id = create_group('json', classes: { 'apache' => params }, variables: { 'v' => { 'deep' => [[]] }, 'n' => nil })
      group = fetch_group(id)
      expect(group['classes']['apache']).to eq(params)
      expect(group['variables']).to eq('v' => { 'deep' => [[]] }, 'n' => nil)
    end

    it 'treats a class given as null as a class without parameters' do
      id = create_group('nullclass', classes: { 'ssl' => nil })
      expect(fetch_group(id)['classes']).to eq('ssl' => {})
    end
  end

  describe 'PUT /v1/groups/<id>' do
    let(:id) { '0f8a3c3e-9d67-4a3e-8d6b-2e0f6f8f4c11' }

    it 'creates with 201 and the group, answers 200 for an identical PUT, 201 for an overwrite' do
      first = client.put("#{groups_path}/#{id}", group_body('put me', description: 'd', classes: { 'ntp' => {} }))
      expect(first.status).to eq(201)
      expect(first.json).to include('id' => id, 'name' => 'put me', 'description' => 'd', 'serial_number' => 1)
      same = client.put("#{groups_path}/#{id}", group_body('put me', id: id, description: 'd', classes: { 'ntp' => {} }))
      expect(same.status).to eq(200)
      expect(same.json['serial_number']).to eq(1)
      expect(same.json['last_edited']).to eq(first.json['last_edited'])
      changed = client.put("#{groups_path}/#{id}", group_body('put me', classes: { 'ssl' => {} }))
      expect(changed.status).to eq(201)
      expect(changed.json['serial_number']).to eq(2)
    end

    it 'replaces the whole group: keys left out are removed and defaults re-applied' do
      client.put("#{groups_path}/#{id}", group_body('full', description: 'desc', rule: ['=', 'name', 'a'],
                                                            environment: 'development', environment_trumps: true,
                                                            classes: { 'apache' => { 'keepalive_timeout' => 1 } },
                                                            variables: { 'x' => 1 }, config_data: { 'c' => { 'k' => 1 } }))
      client.put("#{groups_path}/#{id}", group_body('full', classes: { 'ntp' => {} }))
      group = fetch_group(id)
      expect(group.keys).not_to include('description', 'rule', 'config_data')
      expect(group).to include('environment' => 'production', 'environment_trumps' => false, 'variables' => {},
                               'classes' => { 'ntp' => {} })
    end

    it 'answers 400 conflicting-ids when the body id differs from the path' do
      other = '1f8a3c3e-9d67-4a3e-8d6b-2e0f6f8f4c11'
      response = client.put("#{groups_path}/#{id}", group_body('x', id: other))
      expect(response.status).to eq(400)
      expect(response.json['kind']).to eq('conflicting-ids')
      expect(response.json['details']).to eq('submitted' => other, 'fromUrl' => id)
    end

    it 'accepts and ignores serial_number and last_edited (GET output is valid PUT input)' do
      client.put("#{groups_path}/#{id}", group_body('round trip'))
      group = fetch_group(id)
      again = client.put("#{groups_path}/#{id}", group.merge('serial_number' => 99))
      expect(again.status).to eq(200)
      expect(again.json['serial_number']).to eq(1)
    end

    it 'refuses to change the root rule through PUT but allows other root changes' do
      root_group = fetch_group(root)
      response = client.put("#{groups_path}/#{root}", root_group.merge('rule' => ['=', 'name', 'x']))
      expect(response.status).to eq(422)
      expect(response.json['kind']).to eq('root-rule-edit')
      ok = client.put("#{groups_path}/#{root}", root_group.merge('variables' => { 'site' => 'x' }))
      expect(ok.status).to eq(201)
      expect(ok.json['rule']).to eq(['and', ['~', 'name', '.*']])
    end
  end

  describe 'POST /v1/groups/<id> (delta)' do
    let!(:id) do
      create_group('delta', description: 'before', rule: ['=', 'name', 'a'],
                            classes: { 'apache' => { 'keepalive_timeout' => 5, 'docroot' => '/var/www' },
                                       'ntp' => { 'servers' => ['a'] }, 'ssl' => {} },
                            variables: { 'keep' => 1, 'drop' => 2 }, config_data: { 'c' => { 'k' => 1, 'j' => 2 } })
    end

    it 'merges and removes what is null, answering 200 with the updated group' do
      response = client.post("#{groups_path}/#{id}", {
                               'classes' => { 'ssl' => nil, 'apache' => { 'docroot' => nil, 'keepalive_timeout' => 9 },
                                              'motd' => {} },
                               'variables' => { 'drop' => nil, 'new' => [1] },
                               'config_data' => { 'c' => { 'j' => nil } }, 'description' => 'after'
                             })
      expect(response.status).to eq(200)
      group = response.json
      expect(group['classes']).to eq('apache' => { 'keepalive_timeout' => 9 }, 'ntp' => { 'servers' => ['a'] }, 'motd' => {})
      expect(group['variables']).to eq('keep' => 1, 'new' => [1])
      expect(group['config_data']).to eq('c' => { 'k' => 1 })
      expect(group['description']).to eq('after')
      expect(group['rule']).to eq(['=', 'name', 'a'])
      expect(fetch_group(id)).to eq(group)
    end

    it 'is additive: empty objects remove nothing; removing the last parameter keeps the class' do
      client.post("#{groups_path}/#{id}", { 'classes' => {}, 'variables' => {} })
      expect(fetch_group(id)['classes'].keys).to eq(%w[apache ntp ssl])
      response = client.post("#{groups_path}/#{id}", { 'classes' => { 'ntp' => { 'servers' => nil } } })
      expect(response.json['classes']['ntp']).to eq({})
    end

    it 'replaces the rule wholesale and removes it with null' do
      expect(client.post("#{groups_path}/#{id}", { 'rule' => ['or', ['=', 'name', 'b']] }).json['rule'])
        .to eq(['or', ['=', 'name', 'b']])
      response = client.post("#{groups_path}/#{id}", { 'rule' => nil })
      expect(response.json.key?('rule')).to be(false)
    end

    it 'bumps serial_number once per effective change only' do
      expect(fetch_group(id)['serial_number']).to eq(1)
      client.post("#{groups_path}/#{id}", { 'variables' => { 'keep' => 1 } })
      expect(fetch_group(id)['serial_number']).to eq(1)
      client.post("#{groups_path}/#{id}", { 'variables' => { 'keep' => 2 } })
      expect(fetch_group(id)['serial_number']).to eq(2)
    end

    it 'answers 409 conflict on a serial_number mismatch and writes nothing' do
      before = fetch_group(id)
      stale = client.post("#{groups_path}/#{id}", { 'serial_number' => 7, 'name' => 'renamed' })
      expect(stale.status).to eq(409)
      expect(stale.json['kind']).to eq('conflict')
      expect(stale.json.keys).to eq(%w[kind msg details])
      expect(fetch_group(id)).to eq(before)
      fresh = client.post("#{groups_path}/#{id}", { 'serial_number' => 1, 'name' => 'renamed' })
      expect(fresh.status).to eq(200)
      expect(fresh.json).to include('name' => 'renamed', 'serial_number' => 2)
    end

    it '404s an unknown id and never creates' do
      missing = '2e5c0e2f-6b35-4f8e-9f63-7f6e1b2a3c4d'
      response = client.post("#{groups_path}/#{missing}", { 'name' => 'ghost' })
      expect(response.status).to eq(404)
      expect(response.json['details']).to eq("#{groups_path}/#{missing}")
      expect(client.get("#{groups_path}/#{missing}").status).to eq(404)
    end

    it 'answers 404 not-found for POST to /v1/groups/ (no id) as PE does' do
      response = client.post("#{groups_path}/", { 'name' => 'x' })
      expect(response.status).to eq(404)
      expect(response.json).to eq('kind' => 'not-found', 'msg' => 'The resource could not be found.',
                                  'details' => '/classifier-api/v1/groups/')
    end

    it 'answers 400 conflicting-ids and schema-violation like POST' do
      other = '3e5c0e2f-6b35-4f8e-9f63-7f6e1b2a3c4d'
      expect(client.post("#{groups_path}/#{id}", { 'id' => other }).json['kind']).to eq('conflicting-ids')
      bad = client.post("#{groups_path}/#{id}", { 'environment_trumps' => 'yes' })
      expect([bad.status, bad.json['kind']]).to eq([400, 'schema-violation'])
      expect(client.post("#{groups_path}/#{id}", { 'deleted' => {} }).json['details']['error']).to eq('deleted' => 'disallowed-key')
      expect(client.post("#{groups_path}/#{id}", { 'classes' => nil }).status).to eq(400)
    end

    it 'refuses any rule key on the root group (422 root-rule-edit), even the same rule' do
      same = client.post("#{groups_path}/#{root}", { 'rule' => ['and', ['~', 'name', '.*']] })
      expect(same.status).to eq(422)
      expect(same.json).to eq('kind' => 'root-rule-edit', 'msg' => "Changing the root group's rule is not permitted.")
      with_others = client.post("#{groups_path}/#{root}", { 'rule' => ['=', 'name', 'x'], 'variables' => { 'a' => 1 } })
      expect(with_others.status).to eq(422)
      expect(with_others.json['msg']).to include('None of your other edits were applied')
      expect(with_others.json['details']).to eq('rule' => ['=', 'name', 'x'], 'variables' => { 'a' => 1 })
      expect(fetch_group(root)['variables']).to eq({})
      expect(client.post("#{groups_path}/#{root}", { 'variables' => { 'a' => 1 } }).status).to eq(200)
    end

    it 'refuses a re-parent that makes a cycle, with the documented message' do
      a = create_group('A')
      b = create_group('B', parent: a)
      response = client.post("#{groups_path}/#{a}", { 'parent' => b })
      expect(response.status).to eq(422)
      expect(response.json['kind']).to eq('inheritance-cycle')
      expect(response.json['msg']).to eq('Detected group inheritance cycle: A -> B -> A. ' \
                                         'See the `details` key for the full groups of the cycle.')
      expect(response.json['details'].map { |g| g['name'] }).to eq(%w[A B])
      self_parent = client.post("#{groups_path}/#{b}", { 'parent' => b })
      expect(self_parent.json['msg']).to start_with('Detected group inheritance cycle: B -> B.')
    end

    it 'refuses a rename into an existing (name, environment)' do
      create_group('taken')
      response = client.post("#{groups_path}/#{id}", { 'name' => 'taken' })
      expect([response.status, response.json['kind']]).to eq([422, 'uniqueness-violation'])
      moved = client.post("#{groups_path}/#{id}", { 'name' => 'taken', 'environment' => 'development',
                                                    'classes' => { 'ssl' => nil, 'apache' => { 'docroot' => nil } } })
      expect(moved.status).to eq(200)
    end

    describe 'missing referents on update' do
      it 'refuses an update that adds a missing class or parameter' do
        response = client.post("#{groups_path}/#{id}", { 'classes' => { 'apache' => { 'nope' => 1 } } })
        expect(response.status).to eq(422)
        expect(response.json['details']).to eq([{ 'kind' => 'missing-parameter', 'missing' => %w[apache nope],
                                                  'environment' => 'production', 'group' => 'delta', 'defined_by' => 'delta' }])
      end

      it 'checks each group in its own environment when a parent changes environment' do
        parent = create_group('env parent')
        create_group('env child', parent: parent, classes: { 'motd' => {} })
        response = client.post("#{groups_path}/#{parent}", { 'environment' => 'development' })
        expect(response.status).to eq(200) # the child keeps its own environment: nothing breaks
        moved = client.post("#{groups_path}/#{parent}", { 'classes' => { 'ssl' => {} } })
        expect(moved.status).to eq(422)
        expect(moved.json['details']).to eq([{ 'kind' => 'missing-class', 'missing' => 'ssl', 'environment' => 'development',
                                               'group' => 'env parent', 'defined_by' => 'env parent' }])
        child_side = client.post("#{groups_path}/#{parent}", { 'environment' => 'production', 'classes' => { 'ssl' => {} } })
        expect(child_side.status).to eq(200)
      end

      it 'names a descendant whose inherited view breaks' do
        parent = create_group('p1')
        create_group('c1', parent: parent, environment: 'development')
        response = client.post("#{groups_path}/#{parent}", { 'classes' => { 'motd' => {} } })
        expect(response.status).to eq(422)
        expect(response.json['msg']).to start_with('A descendent of the group being edited makes reference to the following ' \
                                                   'missing classes: "motd" class in the "development" environment.')
        expect(response.json['details']).to eq([{ 'kind' => 'missing-class', 'missing' => 'motd', 'environment' => 'development',
                                                  'group' => 'c1', 'defined_by' => 'p1' }])
      end

      it 'tolerates references that were already dangling (after a class is deleted)' do
        emulator.stage_classes(EmulatorSpec::CATALOG.merge('production' => EmulatorSpec::CATALOG['production'].reject { |k, _| k == 'ssl' }))
        expect(client.post('/classifier-api/v1/update-classes').status).to eq(201)
        expect(fetch_group(id)['deleted']).to eq('ssl' => { 'puppetlabs.classifier/deleted' => true })
        response = client.post("#{groups_path}/#{id}", { 'description' => 'still fine', 'variables' => { 'z' => 1 } })
        expect(response.status).to eq(200)
        expect(response.json['deleted']).to eq('ssl' => { 'puppetlabs.classifier/deleted' => true })
        worse = client.post("#{groups_path}/#{id}", { 'classes' => { 'gone' => {} } })
        expect(worse.status).to eq(422)
        expect(worse.json['details'].map { |e| e['missing'] }).to eq(['gone'])
        expect(client.post("#{groups_path}/#{id}", { 'classes' => { 'ssl' => nil } }).json.key?('deleted')).to be(false)
      end
    end
  end

  describe 'DELETE /v1/groups/<id>' do
    it 'answers 204 with an empty body, then 404' do
      id = create_group('bye')
      response = client.delete("#{groups_path}/#{id}")
      expect([response.status, response.body]).to eq([204, ''])
      expect(client.delete("#{groups_path}/#{id}").status).to eq(404)
    end

    it 'refuses to delete a group with children (422 children-present) and does not cascade' do
      parent = create_group('Parent')
      kid = create_group('Kid', parent: parent)
      response = client.delete("#{groups_path}/#{parent}")
      expect(response.status).to eq(422)
      expect(response.json['kind']).to eq('children-present')
      expect(response.json['msg']).to eq('The group cannot be deleted because it has children: ["Kid"]')
      expect(response.json['details']['group']['id']).to eq(parent)
      expect(response.json['details']['children'].map { |c| c['id'] }).to eq([kid])
      expect(client.delete("#{groups_path}/#{kid}").status).to eq(204)
      expect(client.delete("#{groups_path}/#{parent}").status).to eq(204)
    end

    it 'never deletes the root' do
      expect(client.delete("#{groups_path}/#{root}").status).to eq(500)
      create_group('under root')
      expect(client.delete("#{groups_path}/#{root}").json['kind']).to eq('children-present')
      expect(client.get("#{groups_path}/#{root}").status).to eq(200)
    end

    it 'answers 400 malformed-uuid for a bad id' do
      expect(client.delete("#{groups_path}/xyz").json['kind']).to eq('malformed-uuid')
    end
  end

  describe 'routing' do
    it 'answers 404 not-found for /classification-api (the path ncio documents by mistake)' do
      response = client.get('/classification-api/v1/groups')
      expect(response.status).to eq(404)
      expect(response.json).to eq('kind' => 'not-found', 'msg' => 'The resource could not be found.',
                                  'details' => '/classification-api/v1/groups')
      expect(client.get('/classifier-api/v2/groups').status).to eq(404)
    end

    it 'answers 405 for a known path with the wrong method' do
      expect(client.request(Net::HTTP::Patch, groups_path, {}).status).to eq(405)
      expect(client.delete(groups_path).status).to eq(405)
    end
  end
end
