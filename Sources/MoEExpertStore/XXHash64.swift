/// xxHash64 (Yann Collet's XXH64, seed 0): the store's checksum of every expert extent, resident tensor and file.
/// Chosen for speed in plain code (four independent 64-bit lanes) and for a fixed, public definition that
/// Python's `xxhash` package reproduces.
public enum XXHash64 {
    static let p1: UInt64 = 0x9E37_79B1_85EB_CA87
    static let p2: UInt64 = 0xC2B2_AE3D_27D4_EB4F
    static let p3: UInt64 = 0x1656_67B1_9E37_79F9
    static let p4: UInt64 = 0x85EB_CA77_C2B2_AE63
    static let p5: UInt64 = 0x27D4_EB2F_1656_67C5

    @inline(__always) static func rotl(_ x: UInt64, _ r: UInt64) -> UInt64 { (x << r) | (x >> (64 - r)) }

    @inline(__always) static func round(_ acc: UInt64, _ input: UInt64) -> UInt64 {
        rotl(acc &+ input &* p2, 31) &* p1
    }

    @inline(__always) static func merge(_ acc: UInt64, _ val: UInt64) -> UInt64 {
        (acc ^ round(0, val)) &* p1 &+ p4
    }

    /// The hash of `count` bytes at `data`.
    public static func hash(_ data: UnsafeRawPointer, count: Int) -> UInt64 {
        var s = Streaming()
        s.update(data, count: count)
        return s.finish()
    }

    public static func hash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        guard let base = bytes.baseAddress else { return hash(UnsafeRawPointer(bitPattern: 1)!, count: 0) }
        return hash(base, count: bytes.count)
    }

    public static func hash(_ bytes: [UInt8]) -> UInt64 { bytes.withUnsafeBytes { hash($0) } }

    /// 16 lowercase hex digits, as written in the manifest.
    public static func hex(_ h: UInt64) -> String {
        let s = String(h, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}

extension XXHash64 {
    /// xxHash64 over bytes that arrive in pieces (a resident tensor converted row by row), in constant memory.
    /// Gives the same value as `hash` over the concatenation.
    public struct Streaming {
        private var v1 = p1 &+ p2, v2 = p2, v3: UInt64 = 0, v4 = 0 &- p1
        private var total = 0
        private var pending: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        private var pendingCount = 0

        public init() {}

        public mutating func update(_ data: UnsafeRawPointer, count: Int) {
            total += count
            var i = 0
            if pendingCount > 0 {
                let n = min(32 - pendingCount, count)
                withUnsafeMutableBytes(of: &pending) { ($0.baseAddress! + pendingCount).copyMemory(from: data, byteCount: n) }
                pendingCount += n
                i = n
                guard pendingCount == 32 else { return }
                withUnsafeBytes(of: pending) { consume($0.baseAddress!) }
                pendingCount = 0
            }
            while i + 32 <= count {
                consume(data + i)
                i += 32
            }
            if i < count {
                withUnsafeMutableBytes(of: &pending) { $0.baseAddress!.copyMemory(from: data + i, byteCount: count - i) }
                pendingCount = count - i
            }
        }

        @inline(__always) private mutating func consume(_ p: UnsafeRawPointer) {
            v1 = round(v1, p.loadUnaligned(fromByteOffset: 0, as: UInt64.self).littleEndian)
            v2 = round(v2, p.loadUnaligned(fromByteOffset: 8, as: UInt64.self).littleEndian)
            v3 = round(v3, p.loadUnaligned(fromByteOffset: 16, as: UInt64.self).littleEndian)
            v4 = round(v4, p.loadUnaligned(fromByteOffset: 24, as: UInt64.self).littleEndian)
        }

        public func finish() -> UInt64 {
            var h: UInt64
            if total >= 32 {
                h = rotl(v1, 1) &+ rotl(v2, 7) &+ rotl(v3, 12) &+ rotl(v4, 18)
                h = merge(h, v1); h = merge(h, v2); h = merge(h, v3); h = merge(h, v4)
            } else {
                h = p5
            }
            h = h &+ UInt64(total)
            var tail = pending
            return withUnsafeBytes(of: &tail) { raw in
                let data = raw.baseAddress!
                var i = 0
                let count = pendingCount
                while i + 8 <= count {
                    h ^= round(0, data.loadUnaligned(fromByteOffset: i, as: UInt64.self).littleEndian)
                    h = rotl(h, 27) &* p1 &+ p4
                    i += 8
                }
                if i + 4 <= count {
                    h ^= UInt64(data.loadUnaligned(fromByteOffset: i, as: UInt32.self).littleEndian) &* p1
                    h = rotl(h, 23) &* p2 &+ p3
                    i += 4
                }
                while i < count {
                    h ^= UInt64(data.load(fromByteOffset: i, as: UInt8.self)) &* p5
                    h = rotl(h, 11) &* p1
                    i += 1
                }
                h ^= h >> 33
                h = h &* p2
                h ^= h >> 29
                h = h &* p3
                h ^= h >> 32
                return h
            }
        }
    }
}
