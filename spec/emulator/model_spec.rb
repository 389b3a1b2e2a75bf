# frozen_string_literal: true

require_relative '../support/test_ca'
require_relative '../support/nc_emulator'
require_relative '../support/nc_emulator_process'
require_relative 'emulator_helper'

# The emulator's model classes on their own, without HTTP.
module ModelSpec
  NC = PeFailoverSpec::NcEmulator
  ROOT = EmulatorSpec::ROOT
end

RSpec.describe ModelSpec::NC::Rules do
  it 'accepts the documented grammar and nothing else' do
    valid = [['=', 'name', 'x'], ['~', %w[trusted extensions pp_role], '^web$'], ['not', ['<=', ['fact', 'a', 0], '1']],
             ['and', ['=', 'name', 'a']], ['or', ['=', 'name', 'a'], ['>', %w[fact b], '2']]]
    invalid = [nil, [], [''], ['and'], ['not'], ['not', ['=', 'a', 'b'], ['=', 'a', 'b']], ['=', 'name', 1],
               ['=', '', 'x'], ['=', ['fact'], 'x'], ['=', %w[facts os], 'x'], ['=', ['fact', 'a', -1], 'x'],
               ['=', ['fact', 'a', 1.5], 'x'], ['in', 'name', 'x'], ['=', 'name', 'x', 'y'], { 'rule' => 1 }]
    valid.each { |r| expect(described_class.valid?(r)).to be(true), r.inspect }
    invalid.each { |r| expect(described_class.valid?(r)).to be(false), r.inspect }
  end

  it 'pins under a top-level or and unpins back' do
    rule = ['and', ['=', 'name', 'x']]
    pinned = described_class.pin(rule, %w[a b a])
    expect(pinned).to eq(['or', rule, ['=', 'name', 'a'], ['=', 'name', 'b']])
    expect(described_class.pin(pinned, ['a'])).to equal(pinned)
    expect(described_class.pinned_nodes(pinned)).to eq(%w[a b])
    expect(described_class.unpin(pinned, %w[a b])).to eq(['or', rule])
    expect(described_class.unpin(['or', ['=', 'name', 'a']], ['a'])).to be_nil
    expect(described_class.unpin(rule, ['x'])).to equal(rule)
  end

  it 'conjoins inherited rules' do
    expect(described_class.conjoin([nil, ['=', 'name', 'a'], nil])).to eq(['=', 'name', 'a'])
    expect(described_class.conjoin([['=', 'a', 'b'], ['=', 'c', 'd']])).to eq(['and', ['=', 'a', 'b'], ['=', 'c', 'd']])
    expect(described_class.conjoin([nil])).to be_nil
  end
end

RSpec.describe ModelSpec::NC::Catalog do
  subject(:catalog) { described_class.new('production' => { 'a' => { 'p' => 1, 'q' => nil }, 'b' => {} }) }

  it 'marks vanished classes and parameters deleted on sync and revives them when they return' do
    catalog.stage('production' => { 'a' => { 'p' => 2 } }, 'test' => { 'c' => {} })
    expect(catalog.class_live?('production', 'b')).to be(true)
    catalog.sync!
    expect(catalog.class_live?('production', 'b')).to be(false)
    expect(catalog.param_live?('production', 'a', 'q')).to be(false)
    expect(catalog.class_object('production', 'a')).to eq('name' => 'a', 'environment' => 'production', 'parameters' => { 'p' => 2 })
    expect(catalog.environments.map { |e| e['name'] }).to eq(%w[production test])
    catalog.stage('production' => { 'a' => { 'p' => 2, 'q' => 3 }, 'b' => {} })
    catalog.sync!('production')
    expect(catalog.class_live?('production', 'b')).to be(true)
    expect(catalog.param_live?('production', 'a', 'q')).to be(true)
    expect(catalog.class_live?('test', 'c')).to be(true)
    expect(catalog.last_update).to match(EmulatorSpec::ISO_MS)
  end

  it 'refuses a malformed catalog with a readable message' do
    expect { catalog.stage('production' => { 'a' => [] }) }.to raise_error(ArgumentError, /class "a" in "production"/)
    expect { catalog.stage([]) }.to raise_error(ArgumentError, /JSON object of environments/)
  end

  it 'records placeholders as deleted' do
    catalog.add_placeholder('staging', 'x', 'y')
    expect(catalog.environment?('staging')).to be(true)
    expect(catalog.class_live?('staging', 'x')).to be(false)
    expect(catalog.classes('staging')).to eq([])
  end
end

RSpec.describe ModelSpec::NC::Store do
  let(:store) { described_class.build(classes: EmulatorSpec::CATALOG) }
  let(:root) { ModelSpec::ROOT }

  def body(name, **extra)
    { 'name' => name, 'parent' => root, 'classes' => {} }.merge(extra.transform_keys(&:to_s))
  end

  it 'serialises concurrent deltas: every effective change bumps serial_number exactly once' do
    id = store.create(body('busy'))['id']
    threads = Array.new(8) { |t| Thread.new { 10.times { |i| store.update(id, { 'variables' => { "t#{t}" => i } }) } } }
    threads.each(&:join)
    group = store.group(id)
    expect(group['serial_number']).to eq(1 + 80)
    expect(group['variables'].size).to eq(8)
  end

  it 'round-trips through to_h/load_state' do
    id = store.create(body('saved', classes: { 'ntp' => {} }))['id']
    Dir.mktmpdir do |dir|
      path = File.join(dir, 'state.json')
      File.write(path, JSON.generate(store.to_h))
      other = described_class.build
      other.load_state(path)
      expect(other.groups).to eq(store.groups)
      expect(other.group(id)['classes']).to eq('ntp' => {})
      expect(other.read_catalog { |c| c.classes('production').size }).to eq(4)
    end
  end

  it 'builds the inherited view root-down with nearer groups winning' do
    a = store.create(body('a', classes: { 'apache' => { 'keepalive_timeout' => 1, 'docroot' => '/a' } },
                               config_data: { 'x' => { 'k' => 1 } }))['id']
    b = store.create(body('b', parent: a, classes: { 'apache' => { 'keepalive_timeout' => 2 } },
                               config_data: { 'x' => { 'j' => 2 } }))['id']
    view = store.group(b, inherited: true)
    expect(view['classes']).to eq('apache' => { 'keepalive_timeout' => 2, 'docroot' => '/a' })
    expect(view['config_data']).to eq('x' => { 'k' => 1, 'j' => 2 })
  end

  it 'reports every error of a failed import on the root-down tree' do
    strict = described_class.build(classes: EmulatorSpec::CATALOG, strict_import: true)
    payload = strict.groups + [body('x', id: 'aaaaaaaa-0000-4000-8000-000000000001', environment: 'production',
                                         environment_trumps: false, variables: {}, classes: { 'q' => {} })]
    expect { strict.import(payload) }.to raise_error(ModelSpec::NC::ApiError) { |e| expect(e.kind).to eq('missing-referents') }
    expect(strict.groups.size).to eq(1)
  end
end

RSpec.describe ModelSpec::NC::Errors do
  it 'joins lists as the classifier does' do
    expect(described_class.to_sentence(%w[a])).to eq('a')
    expect(described_class.to_sentence(%w[a b])).to eq('a and b')
    expect(described_class.to_sentence(%w[a b c])).to eq('a, b, and c')
  end

  it 'renders schema problems like Clojure error maps' do
    expect(described_class.render_problems('a' => 'disallowed-key', 'classes' => { 'x' => '(not (map? 1))' }))
      .to eq('([:a disallowed-key] [:classes {:x (not (map? 1))}])')
  end

  it 'phrases missing-referents for descendants' do
    errors = [{ 'kind' => 'missing-parameter', 'missing' => %w[c p], 'environment' => 'e', 'group' => 'kid1', 'defined_by' => 'top' },
              { 'kind' => 'missing-parameter', 'missing' => %w[c p], 'environment' => 'e', 'group' => 'kid2', 'defined_by' => 'top' }]
    expect(described_class.referents_message(errors, 'top')).to eq(
      'Descendents of the group being edited make reference to the following missing class parameters: "c" class\'s "p" ' \
      'parameter in the "e" environment. See the `details` key for complete information on where each reference to a missing ' \
      'class parameter originated.'
    )
  end
end

RSpec.describe ModelSpec::NC::Api do
  let(:api) { described_class.new(ModelSpec::NC::Store.build) }

  def call(method, path, body = nil, query = {})
    api.call(described_class::Request.new(method: method, path: path, query: query, body: body))
  end

  it 'routes percent-encoded class names and answers JSON errors without HTTP' do
    response = call('GET', '/classifier-api/v1/environments/production/classes/a%3A%3Ab')
    expect([response.status, response.body]).to eq([404, ''])
    bad = call('POST', '/classifier-api/v1/groups', "\xff\xfe")
    expect(bad.status).to eq(400)
    expect(JSON.parse(bad.body)['kind']).to eq('malformed-request')
    expect(call('GET', '/nowhere').status).to eq(404)
  end
end
