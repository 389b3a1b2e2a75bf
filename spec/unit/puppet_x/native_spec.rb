# frozen_string_literal: true

require 'fileutils'
require 'open3'
require 'rbconfig'
require 'tmpdir'
require_relative '../../../lib/puppet_x/pe_failover/snapshot'

LIB = File.expand_path('../../../lib', __dir__)

# Runs Ruby code in a child interpreter with the module's lib (or `lib`) on
# the load path; returns [stdout+stderr, status].
def ruby_child(code, lib: LIB)
  Open3.capture2e(RbConfig.ruby, '-I', lib, '-e', code)
end

RSpec.describe PuppetX::PeFailover::NativeLoader do
  it 'loads the extension built for this Ruby' do
    expect(described_class.available?).to be(true)
    expect(described_class.unavailable_reason).to be_nil
    expect(described_class.candidates.first).to end_with("/#{RUBY_VERSION[%r{\A\d+\.\d+}]}/pe_failover_native.so")
    expect(PuppetX::PeFailover::Native._version).to match(%r{\A\d+\.\d+\.\d+})
  end

  context 'without a compiled extension' do
    around(:each) do |ex|
      Dir.mktmpdir('no_so') do |tmp|
        FileUtils.cp_r(LIB, tmp)
        Dir.glob(File.join(tmp, 'lib', '**', '*.so')).each { |f| FileUtils.rm_f(f) }
        @lib = File.join(tmp, 'lib')
        ex.run
      end
    end

    it 'does not raise at require, and says why and how to build it' do
      out, status = ruby_child(<<~RUBY, lib: @lib)
        require 'puppet_x/pe_failover/snapshot'
        puts "available=\#{PuppetX::PeFailover::NativeLoader.available?}"
        puts PuppetX::PeFailover::NativeLoader.unavailable_reason
        begin
          PuppetX::PeFailover::Snapshot.digest('/tmp')
        rescue PuppetX::PeFailover::NativeUnavailableError => e
          puts "raised: \#{e.message}"
        end
      RUBY
      expect(status).to be_success, out
      expect(out).to include('available=false')
      expect(out).to include("no compiled extension for Ruby #{RUBY_VERSION}")
      expect(out).to include('rake compile')
      expect(out).to include('/opt/puppetlabs/puppet/bin/rake compile')
      expect(out).to match(%r{raised: pe_failover native extension unavailable})
    end

    it 'reports a .so built for another Ruby instead of crashing' do
      dir = File.join(@lib, 'puppet_x', 'pe_failover', RUBY_VERSION[%r{\A\d+\.\d+}])
      FileUtils.mkdir_p(dir)
      File.write(File.join(dir, 'pe_failover_native.so'), "not an ELF file\n")
      out, status = ruby_child(<<~RUBY, lib: @lib)
        require 'puppet_x/pe_failover/native'
        puts PuppetX::PeFailover::NativeLoader.unavailable_reason
      RUBY
      expect(status).to be_success, out
      expect(out).to match(%r{pe_failover_native.so did not load \(LoadError: .*\); it was probably built for another Ruby})
    end
  end

  it 'does not even try under JRuby, and points to Deferred' do
    out, status = ruby_child(<<~RUBY)
      Object.send(:remove_const, :RUBY_ENGINE)
      RUBY_ENGINE = 'jruby'
      require 'puppet_x/pe_failover/native'
      puts PuppetX::PeFailover::NativeLoader.available?
      puts PuppetX::PeFailover::NativeLoader.unavailable_reason
      puts defined?(PuppetX::PeFailover::Native._scan).inspect
    RUBY
    expect(status).to be_success, out
    expect(out).to include("false\nrunning under JRuby")
    expect(out).to include("Deferred('pe_failover::...'")
    expect(out).to include('nil') # the .so was never loaded
  end
end

RSpec.describe 'PuppetX::PeFailover::Native' do
  let(:native) { PuppetX::PeFailover::NativeLoader.load! }

  it 'turns a panic into InternalError, with or without the GVL, and keeps working' do
    # In a child interpreter: the panic message Rust prints on stderr is
    # checked here instead of landing in the rspec output.
    out, status = ruby_child(<<~RUBY)
      require 'puppet_x/pe_failover/native'
      native = PuppetX::PeFailover::NativeLoader.load!
      %w[gvl nogvl].each do |place|
        native._selftest_panic(place)
        puts "\#{place}: no error"
      rescue PuppetX::PeFailover::InternalError => e
        puts "\#{place} raised \#{e.class}: \#{e.message}"
      end
      puts "digest \#{native._scan('/etc', [], nil, false)['digest']}"
    RUBY
    expect(status).to be_success, out
    %w[gvl nogvl].each do |place|
      expect(out).to match(%r{^#{place} raised PuppetX::PeFailover::InternalError: internal error.*this is a bug}), out
    end
    expect(out).to include('panicked', 'self-test panic with the GVL', 'self-test panic without the GVL')
    expect(out).to match(%r{^digest \h{64}$})
  end

  it 'maps core errors to exception classes with kind and path' do
    expect { native._scan('/nonexistent-pe_failover', [], nil, false) }.to raise_error(PuppetX::PeFailover::NotFoundError) { |e|
      expect(e.kind).to eq(:not_found)
      expect(e.path).to eq('/nonexistent-pe_failover')
      expect(e.message).to include('/nonexistent-pe_failover')
    }
    expect { native._scan('/etc', ['[x'], nil, false) }.to raise_error(PuppetX::PeFailover::InvalidPatternError, %r{invalid exclude pattern "\[x"})
    expect { native._diff('/etc', '/etc', [], 'bogus') }.to raise_error(PuppetX::PeFailover::InvalidInputError, %r{unknown diff mode})
  end

  context 'with a large file to hash' do
    around(:each) do |ex|
      Dir.mktmpdir('big') do |tmp|
        # Sparse: costs no disk, but hashing 40 GiB of zeros takes far longer
        # than any of the waits below.
        File.open(File.join(tmp, 'big.bin'), 'w') { |f| f.truncate(40 * 1024**3) }
        @dir = tmp
        ex.run
      end
    end

    it 'releases the GVL while scanning, so other Ruby threads run' do
      ticks = 0
      ticker = Thread.new { loop { ticks += 1; sleep 0.01 } }
      scanner = Thread.new do
        native._scan(@dir, [], nil, false)
      rescue StandardError => e
        e
      end
      sleep 0.5
      seen = ticks
      scanner.raise(RuntimeError, "stop") # Thread#raise trips the cancel token
      result = scanner.join(30)
      ticker.kill
      expect(result).not_to be_nil, 'the scan did not stop after Thread#raise'
      expect(seen).to be > 10
    end

    it 'stops a long scan on Ctrl-C (SIGINT) with Interrupt' do
      script = <<~RUBY
        require 'puppet_x/pe_failover/snapshot'
        $stdout.sync = true
        puts 'scanning'
        begin
          PuppetX::PeFailover::Snapshot.digest(#{@dir.inspect})
          puts 'finished?!'
        rescue Interrupt
          puts 'interrupted'
          exit 42
        end
      RUBY
      r, w = IO.pipe
      pid = Process.spawn(RbConfig.ruby, '-I', LIB, '-e', script, out: w, err: w)
      w.close
      expect(r.gets).to eq("scanning\n")
      sleep 0.5
      Process.kill('INT', pid)
      waited = nil
      60.times do
        waited = Process.waitpid2(pid, Process::WNOHANG)
        break if waited

        sleep 0.25
      end
      unless waited
        Process.kill('KILL', pid)
        Process.wait(pid)
      end
      output = r.read
      expect(waited).not_to be_nil, "the child ignored SIGINT: #{output}"
      expect(waited[1].exitstatus).to eq(42), output
      expect(output).to include('interrupted')
    end
  end
end
