# frozen_string_literal: true

require_relative '../support/test_ca'
require_relative '../support/nc_emulator'
require_relative '../support/nc_emulator_process'
require_relative 'emulator_helper'

# Seeding from the real PE 2016 GET /v1/groups dump (spec/fixtures/nc/) and
# replaying what ncio does against a standby: the emulator must hand the data
# back unchanged and accept the transformed dump as an import.
RSpec.describe 'NC emulator: real fixture round-trips' do
  extend EmulatorSpec::ProcessHelpers
  include EmulatorSpec::Helpers

  let(:fixture) { EmulatorSpec.fixture_groups }

  describe 'in PE 2016 mode' do
    with_emulator(seed: EmulatorSpec::FIXTURE_MIN, args: %w[--pe2016])

    it 'answers GET /v1/groups with exactly the bytes PE 2016 sent' do
      expected = File.read(EmulatorSpec::FIXTURE_MIN).chomp
      expect(client.get(EmulatorSpec::GROUPS).body).to eq(expected)
    end

    it 'keeps non-string parameter values (booleans, arrays, numeric strings) as they are' do
      infra = all_groups.find { |g| g['name'] == 'PE Infrastructure' }
      params = infra['classes']['puppet_enterprise']
      expect(params['database_ssl']).to be(true)
      expect(params['use_application_services']).to be(true)
      expect(params['mcollective_middleware_hosts']).to eq(['master1.puppet.vm'])
      expect(params['database_port']).to eq('5432')
    end

    it 'derives a class catalog holding every class and parameter the seed uses' do
      classes = client.get('/classifier-api/v1/environments/production/classes').json
      used = fixture.flat_map { |g| g['classes'].keys }.uniq
      expect(classes.map { |c| c['name'] }).to match_array(used)
      pe = classes.find { |c| c['name'] == 'puppet_enterprise' }
      expect(pe['parameters'].keys).to match_array(fixture.find { |g| g['name'] == 'PE Infrastructure' }['classes']['puppet_enterprise'].keys)
      expect(client.get('/classifier-api/v1/environments').json.map { |e| e['name'] }).to eq(%w[agent-specified production])
      expect(all_groups.none? { |g| g.key?('deleted') }).to be(true)
    end

    it 'takes its own GET output back through import-hierarchy unchanged' do
      dump = client.get(EmulatorSpec::GROUPS).body
      expect(client.post('/classifier-api/v1/import-hierarchy', dump).status).to eq(204)
      expect(client.get(EmulatorSpec::GROUPS).body).to eq(dump)
    end

    it 'accepts the ncio-transformed standby payload (master1 -> master2) as an import' do
      payload = File.read(EmulatorSpec::FIXTURE_TRANSFORMED)
      expect(client.post('/classifier-api/v1/import-hierarchy', payload).status).to eq(204)
      expect(all_groups).to eq(JSON.parse(payload).sort_by { |g| g['id'] })
      expect(client.get(EmulatorSpec::GROUPS).body).not_to include('master1.puppet.vm')
    end

    it 'refuses a PE 3.x group whose classes this install lacks, until update-classes brings them' do
      pe3 = JSON.parse(File.read(PeFailoverSpec::NcEmulatorProcess.fixture('puppetclassify-pe3x-group-pe-master.json')))
      body = pe3.merge('parent' => EmulatorSpec::ROOT, 'name' => 'PE Master (3.x)')
      response = client.put("#{EmulatorSpec::GROUPS}/#{pe3['id']}", body)
      expect(response.status).to eq(422)
      expect(response.json['details']).to eq([{ 'kind' => 'missing-class', 'missing' => 'pe_repo::platform::el_6_x86_64',
                                                'environment' => 'production', 'group' => 'PE Master (3.x)',
                                                'defined_by' => 'PE Master (3.x)' }])
      catalog = { 'production' => client.get('/classifier-api/v1/classes').json.to_h { |c| [c['name'], c['parameters']] }
                                        .merge('pe_repo::platform::el_6_x86_64' => {}) }
      emulator.stage_classes(catalog)
      client.post('/classifier-api/v1/update-classes')
      created = client.put("#{EmulatorSpec::GROUPS}/#{pe3['id']}", body)
      expect(created.status).to eq(201)
      expect(created.json).to eq(body)
    end
  end

  describe 'in the default (2018.1+) mode' do
    with_emulator(seed: EmulatorSpec::FIXTURE_PRETTY)

    it 'serves the same groups as the compact dump, adding serial_number 1 and last_edited' do
      served = all_groups
      expect(served.map { |g| g.reject { |k, _| %w[serial_number last_edited].include?(k) } }).to eq(fixture)
      expect(served.map { |g| g['serial_number'] }.uniq).to eq([1])
      expect(served.map { |g| g['last_edited'] }).to all(match(EmulatorSpec::ISO_MS))
    end

    it 'keeps serial numbers found in a seed' do
      dump = all_groups
      dump.each_with_index { |g, i| g['serial_number'] = i + 10 }
      File.write(File.join(@tmpdir, 'numbered.json'), JSON.generate(dump))
      emu = PeFailoverSpec::NcEmulatorProcess.new(dir: File.join(@tmpdir, 'numbered'), ca: @ca,
                                                  seed: File.join(@tmpdir, 'numbered.json')).start
      begin
        expect(emu.client.get(EmulatorSpec::GROUPS).json).to eq(dump)
      ensure
        emu.stop
      end
    end
  end

  describe 'with a catalog that lacks some of the seed\'s classes' do
    catalog = { 'production' => { 'puppet_enterprise::profile::agent' => {} } }
    with_emulator(seed: EmulatorSpec::FIXTURE_MIN, classes: catalog)

    it 'loads the seed anyway and annotates the groups with deleted references' do
      master = all_groups.find { |g| g['name'] == 'PE Master' }
      expect(master['deleted']).to include('pe_repo' => { 'puppetlabs.classifier/deleted' => true })
      agent = all_groups.find { |g| g['name'] == 'PE Agent' }
      expect(agent.key?('deleted')).to be(false)
      infra = all_groups.find { |g| g['name'] == 'PE Infrastructure' }
      expect(infra['deleted']).to eq('puppet_enterprise' => { 'puppetlabs.classifier/deleted' => true })
    end
  end
end
