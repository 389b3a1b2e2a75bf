# frozen_string_literal: true

require 'fileutils'
require 'tmpdir'
require_relative '../../../lib/puppet_x/pe_failover/snapshot'
require_relative '../../support/manifest_oracle'

RSpec.describe PuppetX::PeFailover::Snapshot do
  around(:each) do |ex|
    Dir.mktmpdir('snapshot') do |tmp|
      @root = File.join(tmp, 'tree')
      @cache = File.join(tmp, 'scan.cache')
      FileUtils.mkdir_p(File.join(@root, 'signed'))
      3.times { |i| File.write(File.join(@root, 'signed', "n#{i}.pem"), "cert #{i}\n") }
      File.symlink('signed/n0.pem', File.join(@root, 'link'))
      old = Time.now - 60 # old enough for the stat cache to trust
      Dir.glob(File.join(@root, 'signed', '*')).each { |f| File.utime(old, old, f) }
      ex.run
    end
  end

  it 'scans into entries whose digest matches the independent computation' do
    result = described_class.scan(@root, entries: true)
    expect(result['digest']).to eq(PeFailoverSpec::ManifestOracle.digest(@root))
    expect(result['entries'].map { |e| e['path'] }).to eq(%w[link signed signed/n0.pem signed/n1.pem signed/n2.pem])
    link = result['entries'].first
    expect(link).to include('kind' => 'symlink', 'target' => 'signed/n0.pem', 'sha256' => nil)
    expect(result['problems']).to eq([])
  end

  it 'uses the stat cache so a re-scan hashes nothing' do
    # Files changed in the last 2 s are not trusted from the cache (their
    # timestamps could hide a second write); utime just moved their ctime.
    sleep 2.1
    first = described_class.scan(@root, cache: @cache)
    expect(first['stats']).to include('hashed' => 3, 'cache' => 'missing')
    second = described_class.scan(@root, cache: @cache)
    expect(second['stats']).to include('hashed' => 0, 'cached' => 3, 'cache' => 'loaded')
    expect(second['digest']).to eq(first['digest'])
  end

  it 'raises rather than digesting part of a tree' do
    File.write(File.join(@root, "bad\xFF".b), 'x')
    expect { described_class.digest(@root) }.to raise_error(PuppetX::PeFailover::InvalidPathError, %r{not valid UTF-8})
    expect(described_class.scan(@root)['problems'].first).to include('kind' => 'non_utf8_path')
  end

  it 'diffs two trees by content, or by every field' do
    other = "#{@root}-copy"
    FileUtils.cp_r(@root, other)
    expect(described_class.diff(@root, other)).to include('added' => [], 'changed' => [], 'removed' => [])
    all = described_class.diff(@root, other, compare: :all)
    expect(all['changed'].map { |c| c['path'] }).to include('signed/n0.pem')
    expect(all['changed'].first['fields']).to include('mtime')
  end
end
