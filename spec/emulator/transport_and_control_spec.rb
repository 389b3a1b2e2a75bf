# frozen_string_literal: true

require 'English'
require_relative '../support/test_ca'
require_relative '../support/nc_emulator'
require_relative '../support/nc_emulator_process'
require_relative 'emulator_helper'

# mTLS, RBAC allowlist and tokens, the status service, the test-only control
# endpoints (faults, stats, reset), persistence, start-up and CLI flags.
RSpec.describe 'NC emulator: transport, auth and control' do
  extend EmulatorSpec::ProcessHelpers
  include EmulatorSpec::Helpers

  let(:groups_path) { EmulatorSpec::GROUPS }
  # What a failed TLS handshake or a dropped connection looks like to Net::HTTP.
  let(:connection_errors) { [OpenSSL::SSL::SSLError, EOFError, Errno::ECONNRESET, Errno::EPIPE, IOError] }

  def expect_connection_failure(&block)
    expect(&block).to raise_error { |e| expect(connection_errors.any? { |k| e.is_a?(k) }).to be(true), e.inspect }
  end

  describe 'with the default flags' do
    with_emulator(classes: EmulatorSpec::CATALOG, tokens: ['tok-123'])

    describe 'authentication' do
      it 'lets an allowlisted certificate in' do
        expect(client.get(groups_path).status).to eq(200)
      end

      it 'answers 401 with the exact PE body for a CA-signed certificate that is not allowlisted' do
        response = emulator.client('stranger.test').get("#{groups_path}?inherited=false")
        expect(response.status).to eq(401)
        expect(response.body).to eq('{"kind":"puppetlabs.rbac/user-unauthenticated","msg":"Route requires authentication",' \
                                    '"redirect":"/classifier-api/v1/groups?inherited=false"}')
        expect(emulator.client('stranger.test').post(groups_path, group_body('x')).status).to eq(401)
        expect(all_groups.size).to eq(1)
      end

      it 're-reads the allowlist on every request' do
        stranger = emulator.client('late.test')
        expect(stranger.get(groups_path).status).to eq(401)
        emulator.allowlist = %w[client.test late.test]
        expect(stranger.get(groups_path).status).to eq(200)
        emulator.allowlist = %w[client.test]
        expect(stranger.get(groups_path).status).to eq(401)
      end

      it 'accepts a listed RBAC token in X-Authentication or ?token=' do
        expect(emulator.client('stranger.test', token: 'tok-123').get(groups_path).status).to eq(200)
        expect(emulator.client('stranger.test').get("#{groups_path}?token=tok-123").status).to eq(200)
        expect(emulator.client('stranger.test', token: 'wrong').get(groups_path).status).to eq(401)
      end

      it 'needs no allowlist entry for the status service or the control endpoints' do
        stranger = emulator.client('stranger.test')
        expect(stranger.get('/status/v1/simple').status).to eq(200)
        expect(stranger.get('/_emulator/stats').status).to eq(200)
      end

      it 'fails the TLS handshake for a certificate from another CA, and records no request' do
        other_ca = PeFailoverSpec::TestCA.create(File.join(@tmpdir, 'other-ca'), ca_name: 'Puppet CA: other')
        files = other_ca.host_files('client.test', File.join(@tmpdir, 'other-ssl'))
        intruder = PeFailoverSpec::NcClient.new(host: '127.0.0.1', port: emulator.port, cert: files[:cert], key: files[:key],
                                                ca_file: File.join(emulator.ssldir, 'certs', 'ca.pem'))
        expect_connection_failure { intruder.get(groups_path) }
        expect(emulator.stats['total']).to eq(0)
        expect(File.read(emulator.log_path)).to match(/certificate verify failed|unknown ca|SSL/i)
      end

      it 'fails the handshake without a client certificate' do
        expect_connection_failure { emulator.client(cert: false).get('/status/v1/simple') }
      end

      it 'rejects a certificate once the CRL revokes it' do
        doomed = emulator.client('doomed.test')
        emulator.allowlist = %w[client.test doomed.test]
        expect(doomed.get(groups_path).status).to eq(200)
        @ca.revoke('doomed.test')
        expect_connection_failure { doomed.get(groups_path) }
        expect(client.get(groups_path).status).to eq(200)
      end

      it 'presents a server certificate that verifies for 127.0.0.1 against the Puppet CA only' do
        other_ca = PeFailoverSpec::TestCA.create(File.join(@tmpdir, 'wrong-trust'))
        wrong_trust = emulator.client('client.test', ca_file: other_ca.ca_cert_path)
        expect { wrong_trust.get('/status/v1/simple') }.to raise_error(OpenSSL::SSL::SSLError, /certificate verify failed/)
      end
    end

    describe 'connections' do
      it 'serves parallel clients without losing or mixing writes' do
        client # one identity, made before the threads start
        ids = Array.new(6) do |t|
          Thread.new { Array.new(5) { |i| create_group("parallel #{t}-#{i}") } }
        end.flat_map(&:value)
        expect(ids.uniq.size).to eq(30)
        expect(all_groups.map { |g| g['id'] }).to match_array(ids + [EmulatorSpec::ROOT])
      end

      it 'keeps a connection alive across requests, as pooling clients expect' do
        files = @ca.host_files('client.test', File.join(emulator.dir, 'clients', 'client.test'))
        http = Net::HTTP.new('127.0.0.1', emulator.port)
        http.use_ssl = true
        http.ca_file = File.join(emulator.ssldir, 'certs', 'ca.pem')
        http.cert = OpenSSL::X509::Certificate.new(File.read(files[:cert]))
        http.key = OpenSSL::PKey.read(File.read(files[:key]))
        line = 'client.test GET /classifier-api/v1/groups 200'
        logged_before = File.read(emulator.log_path).scan(line).size
        http.start do |session|
          sockets = []
          statuses = Array.new(3) do
            session.get(groups_path).code.tap { sockets << session.instance_variable_get(:@socket).io }
          end
          statuses << session.post(groups_path, JSON.generate(group_body('kept alive')), 'Content-Type' => 'application/json').code
          sockets << session.instance_variable_get(:@socket).io
          expect(statuses).to eq(%w[200 200 200 303])
          expect(sockets.uniq.size).to eq(1) # Net::HTTP would have reconnected had the server closed
        end
        expect(File.read(emulator.log_path).scan(line).size - logged_before).to eq(3)
        expect(emulator.stats['total']).to eq(4)
      end
    end

    describe 'status service' do
      it 'reports the four console services as running' do
        response = client.get('/status/v1/services')
        expect(response.status).to eq(200)
        expect(response['content-type']).to eq('application/json; charset=utf-8')
        body = response.json
        expect(body.keys).to eq(%w[activity-service classifier-service rbac-service status-service])
        expect(body['classifier-service']).to include('state' => 'running', 'detail_level' => 'info', 'service_status_version' => 1,
                                                      'active_alerts' => [])
        expect(body['classifier-service']['status']).to include('db_up' => true)
      end

      it 'serves one service, 404s an unknown one and 400s a bad level or timeout' do
        expect(client.get('/status/v1/services/classifier-service').json['state']).to eq('running')
        expect(client.get('/status/v1/services/classifier-service?level=critical').json['status']).to be_nil
        expect(client.get('/status/v1/services/nope').status).to eq(404)
        expect(client.get('/status/v1/services?level=loud').status).to eq(400)
        expect(client.get('/status/v1/services?timeout=soon').status).to eq(400)
      end

      it 'answers plain text on /status/v1/simple' do
        response = client.get('/status/v1/simple')
        expect([response.status, response.body]).to eq([200, 'running'])
        expect(response['content-type']).to start_with('text/plain')
        expect(client.get('/status/v1/simple/classifier-service').body).to eq('running')
      end
    end

    describe 'fault injection' do
      it 'error500: answers 500 application-error for `count` requests, then recovers' do
        emulator.fault('error500', count: 2)
        2.times do
          response = client.get(groups_path)
          expect(response.status).to eq(500)
          expect(response.json['kind']).to eq('application-error')
          expect(response.json.keys).to eq(%w[kind msg details])
        end
        expect(client.get(groups_path).status).to eq(200)
      end

      it 'starting: classifier answers 503 and status shows starting until cleared' do
        emulator.fault('starting')
        expect(client.get(groups_path).status).to eq(503)
        status = client.get('/status/v1/services')
        expect(status.status).to eq(503)
        expect(status.json['classifier-service']['state']).to eq('starting')
        expect(status.json['rbac-service']['state']).to eq('running')
        expect(client.get('/status/v1/simple')).to have_attributes(status: 503, body: 'starting')
        emulator.fault('none')
        expect(client.get(groups_path).status).to eq(200)
        expect(client.get('/status/v1/simple').body).to eq('running')
      end

      it 'error500 shows the classifier as error in the status service' do
        emulator.fault('error500', count: 1)
        expect(client.get('/status/v1/services/classifier-service').json['state']).to eq('error')
      end

      it 'slow: delays the answer' do
        emulator.fault('slow', count: 1, delay: 0.4)
        started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        expect(client.get(groups_path).status).to eq(200)
        expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be >= 0.4
        started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        client.get(groups_path)
        expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be < 0.4
      end

      it 'drop: closes the connection without answering, control endpoints keep working' do
        emulator.fault('drop')
        expect_connection_failure { client.get(groups_path) }
        expect_connection_failure { client.post(groups_path, group_body('lost')) }
        expect(emulator.stats['by_status']).to eq('dropped' => 2)
        emulator.fault('none')
        expect(all_groups.size).to eq(1)
      end

      it 'refuses a bad fault document with 400' do
        control = emulator.client('emulator-control.test')
        expect(control.post('/_emulator/fault', { 'mode' => 'explode' }).status).to eq(400)
        expect(control.post('/_emulator/fault', { 'mode' => 'slow', 'count' => 0 }).status).to eq(400)
        expect(control.post('/_emulator/fault', { 'mode' => 'slow', 'delay' => 'long' }).json['msg']).to include('delay')
        expect(control.post('/_emulator/fault', 'nope').status).to eq(400)
        expect(control.get('/_emulator/fault').json['mode']).to eq('none')
      end
    end

    describe 'stats and reset' do
      it 'counts requests by route and counts write attempts, failed ones included' do
        client.get(groups_path)
        id = create_group('counted')
        client.get("#{groups_path}/#{id}")
        client.post("#{groups_path}/#{id}", { 'name' => 'x', 'bad' => 1 })
        client.post('/classifier-api/v1/validate/group', group_body('v'))
        client.post('/classifier-api/v1/update-classes')
        client.delete("#{groups_path}/#{id}")
        stats = emulator.stats
        expect(stats['writes']).to eq(3)
        expect(stats['total']).to eq(7)
        expect(stats['by_route']).to eq(
          'GET /classifier-api/v1/groups' => 1, 'POST /classifier-api/v1/groups' => 1,
          'GET /classifier-api/v1/groups/:id' => 1, 'POST /classifier-api/v1/groups/:id' => 1,
          'POST /classifier-api/v1/validate/group' => 1, 'POST /classifier-api/v1/update-classes' => 1,
          'DELETE /classifier-api/v1/groups/:id' => 1
        )
        expect(stats['write_log'].map { |w| [w['method'], w['status']] }).to eq([['POST', 303], ['POST', 400], ['DELETE', 204]])
        expect(emulator.reset_stats['total']).to eq(0)
      end

      it 'shows zero writes for a read-only client' do
        all_groups
        client.get('/classifier-api/v1/classes')
        client.get('/status/v1/services')
        expect(writes).to eq(0)
      end

      it 'reset restores the seed state, the catalog and clears faults' do
        create_group('temporary')
        emulator.stage_classes({ 'production' => {} })
        client.post('/classifier-api/v1/update-classes')
        emulator.fault('error500')
        emulator.reset!
        expect(all_groups.map { |g| g['name'] }).to eq(['All Nodes'])
        expect(client.get('/classifier-api/v1/environments/production/classes').json.size).to eq(4)
        expect(emulator.client('emulator-control.test').get('/_emulator/classes').json).to eq(EmulatorSpec::CATALOG)
      end

      it 'answers 404 for an unknown control endpoint' do
        expect(emulator.client('emulator-control.test').get('/_emulator/nothing').status).to eq(404)
      end
    end
  end

  describe 'state persistence' do
    with_emulator(classes: EmulatorSpec::CATALOG, state: true)

    it 'writes the state atomically after each write and loads it on restart' do
      id = create_group('durable', classes: { 'ntp' => { 'servers' => ['t'] } })
      client.post("#{groups_path}/#{id}", { 'variables' => { 'v' => 2 } })
      saved = JSON.parse(File.read(emulator.state_path))
      expect(saved['groups'].map { |g| g['name'] }).to include('durable')
      expect(Dir.glob("#{emulator.state_path}*")).to eq([emulator.state_path])
      before = all_groups
      emulator.restart
      expect(all_groups).to eq(before)
      expect(fetch_group(id)['serial_number']).to eq(2)
      expect(emulator.client.post("#{groups_path}/#{id}", { 'serial_number' => 2, 'name' => 'again' }).status).to eq(200)
    end

    it 'persists a reset too' do
      create_group('to be reset')
      emulator.reset!
      emulator.restart
      expect(all_groups.map { |g| g['name'] }).to eq(['All Nodes'])
    end
  end

  describe 'import and data flags' do
    with_emulator(classes: EmulatorSpec::CATALOG, args: %w[--strict-import --import-accepts-deleted --no-config-data])

    let(:root_group) { fetch_group(EmulatorSpec::ROOT) }

    it '--strict-import answers 422 missing-referents and imports nothing' do
      payload = [root_group, { 'id' => 'aaaaaaaa-0000-4000-8000-000000000001', 'parent' => EmulatorSpec::ROOT, 'name' => 'A',
                               'environment' => 'production', 'environment_trumps' => false,
                               'classes' => { 'future' => {} }, 'variables' => {} }]
      response = client.post('/classifier-api/v1/import-hierarchy', payload)
      expect(response.status).to eq(422)
      expect(response.json['kind']).to eq('missing-referents')
      expect(response.json['details']).to eq([{ 'kind' => 'missing-class', 'missing' => 'future', 'environment' => 'production',
                                                'group' => 'A', 'defined_by' => 'A' }])
      expect(response.json['msg']).to start_with('A descendent of the group being edited makes reference')
      expect(all_groups.size).to eq(1)
    end

    it '--import-accepts-deleted ignores the deleted annotation in import payloads' do
      payload = [root_group.merge('deleted' => { 'x' => { 'puppetlabs.classifier/deleted' => true } })]
      expect(client.post('/classifier-api/v1/import-hierarchy', payload).status).to eq(204)
      expect(fetch_group(EmulatorSpec::ROOT).key?('deleted')).to be(false)
    end

    it '--no-config-data refuses config_data' do
      response = client.post(groups_path, group_body('x', config_data: { 'c' => { 'k' => 1 } }))
      expect(response.status).to eq(400)
      expect(response.json['details']['error']).to eq('config_data' => 'disallowed-key')
    end
  end

  describe 'PE 2016 mode and token-only clients' do
    with_emulator(seed: EmulatorSpec::FIXTURE_MIN, tokens: ['tok-2016'], args: %w[--pe2016 --client-auth want])

    it 'omits serial_number and last_edited and refuses them on writes' do
      group = all_groups.first
      expect(group.keys).not_to include('serial_number', 'last_edited')
      response = client.post("#{groups_path}/#{group['id']}", { 'serial_number' => 1 })
      expect(response.json['details']['error']).to eq('serial_number' => 'disallowed-key')
    end

    it 'with --client-auth want, lets a token-only client in and 401s one without credentials' do
      expect(emulator.client(cert: false, token: 'tok-2016').get(groups_path).status).to eq(200)
      expect(emulator.client(cert: false).get(groups_path).status).to eq(401)
    end
  end

  describe 'process lifecycle' do
    around do |example|
      Dir.mktmpdir('nc-emulator-life') do |dir|
        @life_dir = dir
        @life_ca = PeFailoverSpec::TestCA.create(File.join(dir, 'ca'))
        example.run
      ensure
        @life&.stop
      end
    end

    def life(**options)
      @life = PeFailoverSpec::NcEmulatorProcess.new(dir: File.join(@life_dir, 'emu'), ca: @life_ca, **options)
    end

    it '--start-delay refuses connections until the socket opens; SIGTERM stops it cleanly' do
      emu = life(port: PeFailoverSpec::NcEmulatorProcess.free_port, args: %w[--start-delay 1.0])
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      emu.start(wait: false)
      sleep 0.3
      expect { TCPSocket.new('127.0.0.1', emu.port).close }.to raise_error(Errno::ECONNREFUSED)
      emu.wait_ready(timeout: 10)
      expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be >= 1.0
      expect(emu.client.get('/status/v1/simple').status).to eq(200)
      pid_file = File.join(emu.dir, 'emulator.pid')
      expect(File.read(pid_file).to_i).to eq(emu.pid)
      Process.kill('TERM', emu.pid)
      _, status = Process.wait2(emu.pid)
      expect(status.exitstatus).to eq(0)
      expect(File.exist?(pid_file)).to be(false)
      expect(File.exist?(File.join(emu.dir, 'ready'))).to be(false)
      expect(File.read(emu.log_path)).to include('stopped')
    end

    it 'exits 2 with a clear message for a seed that is not a valid hierarchy' do
      seed = [{ 'id' => EmulatorSpec::ROOT, 'parent' => EmulatorSpec::ROOT, 'name' => 'All Nodes', 'environment' => 'production',
                'environment_trumps' => false, 'classes' => {}, 'variables' => {} },
              { 'id' => 'aaaaaaaa-0000-4000-8000-000000000001', 'parent' => 'bbbbbbbb-0000-4000-8000-000000000002', 'name' => 'Lost',
                'environment' => 'production', 'environment_trumps' => false, 'classes' => {}, 'variables' => {} }]
      emu = life(seed: seed)
      expect { emu.start(timeout: 10) }.to raise_error(PeFailoverSpec::NcEmulatorProcess::StartError,
                                                       /status 2.*seed rejected \(422 unreachable-groups\).*"Lost"/m)
    end

    it 'exits 2 and prints usage when a required flag is missing' do
      output = IO.popen([RbConfig.ruby, PeFailoverSpec::NcEmulatorProcess::SCRIPT, '--port', '0'], err: %i[child out], &:read)
      expect($CHILD_STATUS.exitstatus).to eq(2)
      expect(output).to include('missing --cert, --key, --cacert, --allowlist').and include('Usage:')
    end

    it 'picks its own port with --port 0 and reports it in the ready file' do
      emu = life(port: 0).start
      port = Integer(File.read(File.join(emu.dir, 'ready')))
      expect(port).to be > 0
      expect(emu.port).to eq(port)
      expect(emu.client.get('/status/v1/simple').body).to eq('running')
    end
  end
end
