# frozen_string_literal: true

require_relative 'native'

module PuppetX
  module PeFailover
    # Snapshots of directory trees, computed by the native core.
    #
    # @example
    #   PuppetX::PeFailover::Snapshot.digest('/etc/puppetlabs/puppet/ssl', exclude: ['private_keys'])
    #   # => "3f5c...64 hex digits"
    module Snapshot
      module_function

      # Scans `dir` (symlinks recorded, never followed).
      #
      # @param dir [String] directory to scan
      # @param exclude [Array<String>] glob patterns relative to `dir`; a
      #   matching directory excludes everything below it
      # @param cache [String, nil] stat cache file; re-scans then hash only
      #   files whose size, times or inode changed
      # @param entries [Boolean] include every entry's fields in the result
      # @return [Hash] `'digest'`, `'count'`, `'stats'`, `'problems'` (entries
      #   that could not be read, as `{'kind','path','message'}`), and
      #   `'entries'` when asked
      # @raise [PuppetX::PeFailover::Error] when `dir` cannot be read at all
      def scan(dir, exclude: [], cache: nil, entries: false)
        native = NativeLoader.load!
        native._scan(String(dir), Array(exclude).map(&:to_s), cache&.to_s, entries ? true : false)
      end

      # The root digest of `dir`: 64 lowercase hex digits that change when any
      # entry's type, permission bits, owner, size, mtime, contents or link
      # target changes, or an entry is added or removed.
      #
      # @param dir [String] directory to scan
      # @param exclude [Array<String>] glob patterns relative to `dir`
      # @param cache [String, nil] stat cache file (see {.scan})
      # @return [String]
      # @raise [PuppetX::PeFailover::Error] also when any entry is unreadable:
      #   a digest over part of a tree would mislead
      def digest(dir, exclude: [], cache: nil)
        result = scan(dir, exclude: exclude, cache: cache)
        problems = result['problems']
        unless problems.empty?
          first = problems.first
          more = problems.size > 1 ? " (and #{problems.size - 1} more)" : ''
          raise error_class(first['kind']).new("#{first['message']}#{more}", first['kind'].to_sym, first['path'])
        end
        result['digest']
      end

      # Differences between two trees, as paths relative to each.
      #
      # @param from [String] the tree taken as the starting point
      # @param to [String] the tree compared with it
      # @param exclude [Array<String>] glob patterns ignored on both sides
      # @param compare [Symbol] `:content` (default) compares type, permission
      #   bits, contents and link targets, which two hosts' copies must share;
      #   `:all` also compares owners and modification times
      # @return [Hash] `'added'`, `'removed'` (sorted paths), `'changed'`
      #   (`{'path','fields'}`), `'from_digest'`, `'to_digest'`
      def diff(from, to, exclude: [], compare: :content)
        native = NativeLoader.load!
        native._diff(String(from), String(to), Array(exclude).map(&:to_s), compare.to_s)
      end

      # The exception class for the core's error `kind`.
      # @api private
      def error_class(kind)
        name = {
          'not_found' => :NotFoundError, 'permission_denied' => :PermissionError,
          'non_utf8_path' => :InvalidPathError, 'io' => :IoError
        }.fetch(kind.to_s, :Error)
        PuppetX::PeFailover.const_get(name)
      end
    end
  end
end
