# frozen_string_literal: true

require 'digest'
require 'find'
require 'open3'

module PeFailoverSpec
  # An independent, plain-Ruby computation of the manifest root digest, from
  # the canonical form documented in ext/pe_failover_core/src/snapshot.rs
  # (`Manifest::canonical_bytes`), hashed with BLAKE3 by `b3sum` (Debian
  # package b3sum; Ruby has no BLAKE3 of its own). Specs compare the native
  # result with it, so a change of the format or of what is recorded is
  # caught twice.
  module ManifestOracle
    module_function

    # @return [String] the root digest of `dir`, leaving out paths for which
    #   the block (if given) returns true
    def digest(dir)
      entries = []
      Find.find(dir) do |abs|
        next if abs == dir

        rel = abs.delete_prefix("#{dir}/")
        if block_given? && yield(rel)
          Find.prune
          next
        end
        st = File.lstat(abs)
        entries << entry(abs, rel, st)
      end
      entries.sort_by! { |e| e[:path].b }
      out = +"pe_failover manifest v1\n".b
      out << [entries.size].pack('Q<')
      entries.each { |e| out << canonical(e) }
      blake3(out)
    end

    def blake3(bytes)
      hex, status = Open3.capture2('b3sum', '--no-names', stdin_data: bytes, binmode: true)
      raise "b3sum failed (#{status}); install the Debian package b3sum" unless status.success?

      hex.strip
    end

    def entry(abs, rel, st)
      kind, size, sha, target =
        if st.symlink?
          t = File.readlink(abs)
          ['l', t.bytesize, '', t]
        elsif st.directory?
          ['d', 0, '', '']
        else
          ['f', st.size, Digest::SHA256.file(abs).hexdigest, '']
        end
      { kind: kind, path: rel, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, size: size,
        mtime_ns: st.mtime.to_i * 1_000_000_000 + st.mtime.nsec, sha: sha, target: target }
    end

    def canonical(e)
      s = +e[:kind].b
      s << [e[:path].bytesize].pack('Q<') << e[:path].b
      s << [e[:mode], e[:uid], e[:gid]].pack('L<L<L<')
      s << [e[:size]].pack('Q<') << [e[:mtime_ns]].pack('q<')
      s << [e[:sha].bytesize].pack('Q<') << e[:sha].b
      s << [e[:target].bytesize].pack('Q<') << e[:target].b
      s
    end
  end
end
