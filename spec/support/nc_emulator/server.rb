# frozen_string_literal: true

require 'json'
require 'openssl'
require 'uri'
require 'webrick'
require 'webrick/https'
require_relative 'api'
require_relative 'auth'
require_relative 'faults'
require_relative 'stats'

module PeFailoverSpec
  module NcEmulator
    # The HTTPS front: WEBrick with mutual TLS, then per request the fault
    # injection, RBAC authentication and the /_emulator/ control endpoints,
    # before handing over to Api. Deliberately thin: no classifier logic here.
    class Server
      CONTROL_PREFIX = '/_emulator/'

      # A WEBrick response that can be abandoned: nothing is written and the
      # connection is closed, which a client sees as a dropped connection.
      class DroppableResponse < WEBrick::HTTPResponse
        def drop!
          @dropped = true
          @keep_alive = false
        end

        def send_response(socket)
          return super unless @dropped

          socket.to_io.shutdown(Socket::SHUT_RDWR)
        rescue IOError, SystemCallError
          nil
        end
      end

      # WEBrick's logger, printing exceptions (failed TLS handshakes, mostly:
      # expected in tests) on one line without a backtrace.
      class OneLineLog < WEBrick::Log
        def format(arg)
          arg.is_a?(Exception) ? "#{arg.class}: #{arg.message}" : super
        end
      end

      # WEBrick's HTTP server, building DroppableResponses.
      class Httpd < WEBrick::HTTPServer
        def create_response(config)
          DroppableResponse.new(config)
        end
      end

      # Hands every request, whatever its method, to Server#handle.
      class Servlet < WEBrick::HTTPServlet::AbstractServlet
        def service(req, res)
          @options.first.handle(req, res)
        end
      end

      attr_reader :port, :stats, :faults

      # settings: bind, port, cert, key, cacert, crl (paths), client_auth
      # ("required" or "want"); log: a proc taking one line.
      def initialize(settings, store:, auth:, log:)
        @settings = settings
        @api = Api.new(store)
        @store = store
        @auth = auth
        @log = log
        @faults = Faults.new
        @stats = Stats.new
      end

      # Opens the listening socket; returns the port (useful with port 0).
      def listen
        @httpd = Httpd.new(webrick_config)
        @httpd.mount('/', Servlet, self)
        @port = @httpd.config[:Port]
      end

      # Serves until shutdown (blocking).
      def run
        @httpd.start
      end

      def shutdown
        @httpd&.shutdown
      end

      def handle(req, res)
        started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        path = req.request_uri.path
        response = path.start_with?(CONTROL_PREFIX) ? control(req, path) : serve(req, res, path)
        write(res, response) if response
        log_request(req, response ? response.status : 'dropped', started)
      end

      private

      def serve(req, res, path)
        fault = @faults.take
        if fault&.mode == 'drop'
          res.drop!
          @stats.record(req.request_method, path, Api.pattern(req.request_method, path), 'dropped')
          return nil
        end
        sleep(fault.delay) if fault&.mode == 'slow'
        response = respond(req, path, fault)
        @stats.record(req.request_method, path, Api.pattern(req.request_method, path), response.status)
        response
      end

      def respond(req, path, fault)
        classifier = path.start_with?('/classifier-api/')
        return error_response(Errors.service_unavailable) if classifier && fault&.mode == 'starting'
        return error_response(Errors.application_error('Injected fault: internal error')) if classifier && fault&.mode == 'error500'
        return unauthenticated(req) if classifier && !authenticated?(req)

        @api.call(Api::Request.new(method: req.request_method, path: path, query: query(req),
                                   body: body(req), fault: fault))
      rescue StandardError => e
        # An emulator bug: answer like the classifier's catch-all and keep serving.
        @log.call("internal error: #{e.class}: #{e.message}\n  #{e.backtrace.first(8).join("\n  ")}")
        error_response(Errors.application_error("#{e.class}: #{e.message}"))
      end

      def authenticated?(req)
        token = req['X-Authentication'] || query(req)['token']
        @auth.allowed?(Auth.certname(req.client_cert), token)
      end

      def unauthenticated(req)
        Api::Response.new(401, { 'Content-Type' => Api::JSON_TYPE },
                          JSON.generate(Auth.unauthenticated_body(req.unparsed_uri)))
      end

      def error_response(error)
        Api::Response.new(error.status, { 'Content-Type' => Api::JSON_TYPE }, JSON.generate(error.body))
      end

      # ---- /_emulator/ control endpoints (test-only, not part of PE) ----

      def control(req, path)
        case [req.request_method, path.delete_prefix(CONTROL_PREFIX)]
        when %w[GET fault] then control_json(200, @faults.to_h)
        when %w[POST fault] then control_json(200, @faults.set(control_body(req)))
        when %w[GET classes] then control_json(200, @store.read_catalog(&:code))
        when %w[PUT classes] then stage_classes(req)
        when %w[GET stats] then control_json(200, @stats.to_h)
        when %w[DELETE stats] then reset_stats
        when %w[GET state] then control_json(200, @store.to_h)
        when %w[POST reset] then reset_all
        else control_json(404, { 'kind' => 'not-found', 'msg' => "No control endpoint #{req.request_method} #{path}" })
        end
      rescue ArgumentError, JSON::ParserError => e
        control_json(400, { 'kind' => 'bad-control-request', 'msg' => e.message })
      end

      def stage_classes(req)
        @store.stage_classes(control_body(req))
        control_json(200, { 'staged' => true })
      end

      def reset_stats
        @stats.reset!
        control_json(200, @stats.to_h)
      end

      def reset_all
        @store.reset!
        @faults.clear
        @stats.reset!
        control_json(200, { 'reset' => true })
      end

      def control_body(req)
        JSON.parse(body(req).to_s)
      end

      def control_json(status, value)
        Api::Response.new(status, { 'Content-Type' => Api::JSON_TYPE }, JSON.generate(value))
      end

      # ---- plumbing ----------------------------------------------------

      def query(req)
        req.query_string ? URI.decode_www_form(req.query_string).to_h : {}
      rescue ArgumentError
        {}
      end

      # Reads the body only when the request announces one, so a body-less
      # POST without Content-Length does not block the connection.
      def body(req)
        return nil unless req['Content-Length'] || req['Transfer-Encoding']

        req.body
      end

      def write(res, response)
        res.status = response.status
        response.headers.each { |k, v| res[k] = v }
        # Keep Location path-only, as PE sends it (WEBrick would make it absolute).
        res.request_uri = nil if response.headers.key?('Location')
        res.body = response.body
      end

      def log_request(req, status, started)
        ms = ((Process.clock_gettime(Process::CLOCK_MONOTONIC) - started) * 1000).round(1)
        who = Auth.certname(req.client_cert) || '-'
        @log.call("#{who} #{req.request_method} #{req.unparsed_uri} #{status} #{ms}ms")
      end

      def webrick_config
        ca = OpenSSL::X509::Certificate.new(File.read(@settings[:cacert]))
        {
          BindAddress: @settings[:bind], Port: @settings[:port],
          Logger: OneLineLog.new(@settings[:log_io], WEBrick::BasicLog::WARN),
          AccessLog: [], DoNotReverseLookup: true, RequestTimeout: 30,
          # WEBrick writes headers and body separately; without this each
          # response waits ~40 ms for the client's delayed ACK (Nagle).
          AcceptCallback: ->(sock) { sock.to_io.setsockopt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY, 1) },
          SSLEnable: true,
          SSLCertificate: OpenSSL::X509::Certificate.new(File.read(@settings[:cert])),
          SSLPrivateKey: OpenSSL::PKey.read(File.read(@settings[:key])),
          SSLCertificateStore: OpenSSL::X509::Store.new.tap { |s| s.add_cert(ca) },
          SSLClientCA: [ca],
          SSLVerifyClient: verify_mode,
          SSLVerifyCallback: @settings[:crl] ? CrlCheck.new(@settings[:crl], ca, @log).to_proc : nil
        }
      end

      def verify_mode
        mode = OpenSSL::SSL::VERIFY_PEER
        mode |= OpenSSL::SSL::VERIFY_FAIL_IF_NO_PEER_CERT unless @settings[:client_auth] == 'want'
        mode
      end
    end
  end
end
