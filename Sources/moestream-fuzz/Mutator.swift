import MoETensor

/// Deterministic mutations of a file's bytes: every case is a pure function of (seed, kind, case number), so a
/// crash found once is found again by the same command, and its input can be rebuilt from three numbers.

/// The choices a mutation makes, drawn from MoETensor's SplitMix64 (the same sequence on every machine).
extension SplitMix {
    /// Uniform in 0..<n (n > 0).
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(max(1, n))) }

    mutating func chance(_ percent: Int) -> Bool { below(100) < percent }

    mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
}

/// How a file is mutated: bytes only, or also as text (numbers and strings swapped for hostile ones).
enum MutationStyle {
    case binary
    /// JSON or line-oriented text.
    case text
    /// A safetensors file: its JSON header mutated as text and the length prefix rewritten to match, or bytes.
    case safetensors
}

struct Mutator {
    var rng: SplitMix

    /// Numbers that break arithmetic: zero, signs, powers of two around Int32/Int64/UInt64 limits, huge and tiny
    /// floats.
    static let hostileNumbers = [
        "0", "-1", "1", "2", "3", "7", "-7", "255", "256", "4095", "4097", "65536", "2147483647", "2147483648",
        "-2147483649", "4294967296", "4294967295", "9223372036854775807", "-9223372036854775808",
        "9223372036854775800", "18446744073709551615", "18446744073709551616", "1e308", "-1e308", "1e999",
        "1e-320", "0.5", "-0.0", "1.5", "100000000000", "1e19", "123456789",
    ]
    static let hostileStrings = [
        "", "x", "../../../etc/passwd", "/dev/zero", "<|im_end|>", "[EOS]", "\\u0000", "\\ud800", "é",
        String(repeating: "A", count: 5000), "BF16", "F32", "I32", "U8", "F8_E4M3", "int4", "int8", "yarn",
        "experts/layer-001.bin", "resident.safetensors", "model-00001-of-00007.safetensors", "null",
    ]
    static let hostileInts: [UInt64] = [
        0, 1, 0x7F, 0x80, 0xFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0x1_0000_0000, 0x7FFF_FFFF_FFFF_FFFF,
        0x8000_0000_0000_0000, 0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFFF_FFF8, 4096, 8,
    ]

    mutating func mutate(_ input: [UInt8], style: MutationStyle) -> [UInt8] {
        var data = input
        let rounds = 1 + rng.below(rng.chance(70) ? 2 : 6)
        for _ in 0..<rounds {
            switch style {
            case .binary: data = binary(data)
            case .text: data = rng.chance(75) ? text(data) : binary(data)
            case .safetensors: data = rng.chance(60) ? safetensorsHeader(data) : binary(data)
            }
        }
        return data
    }

    // MARK: bytes

    mutating func binary(_ input: [UInt8]) -> [UInt8] {
        var d = input
        switch rng.below(8) {
        case 0:  // flip bits
            guard !d.isEmpty else { return [UInt8(rng.below(256))] }
            for _ in 0..<(1 + rng.below(8)) { d[rng.below(d.count)] ^= UInt8(1 << rng.below(8)) }
        case 1:  // hostile bytes
            guard !d.isEmpty else { return d }
            for _ in 0..<(1 + rng.below(4)) { d[rng.below(d.count)] = rng.pick([0, 0xFF, 0x7F, 0x80, 0x22, 0x5C, 0x0A]) }
        case 2:  // a hostile 8- or 4-byte little-endian integer, often at the start (length fields)
            let v = rng.pick(Self.hostileInts) &+ UInt64(rng.below(3)) &- 1
            let width = rng.chance(50) ? 8 : 4
            guard d.count >= width else { return d }
            let at = rng.chance(40) ? 0 : rng.below(d.count - width + 1)
            for i in 0..<width { d[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
        case 3:  // truncate
            guard !d.isEmpty else { return d }
            d.removeLast(rng.chance(50) ? 1 + rng.below(min(d.count, 64)) : rng.below(d.count) + 1)
        case 4:  // extend
            d += (0..<(1 + rng.below(4096))).map { _ in rng.chance(50) ? 0 : UInt8(rng.below(256)) }
        case 5:  // delete a chunk
            guard d.count > 1 else { return d }
            let a = rng.below(d.count), n = 1 + rng.below(min(256, d.count - a))
            d.removeSubrange(a..<(a + n))
        case 6:  // duplicate a chunk
            guard !d.isEmpty else { return d }
            let a = rng.below(d.count), n = 1 + rng.below(min(256, d.count - a))
            d.insert(contentsOf: d[a..<(a + n)], at: rng.below(d.count))
        default:  // random bytes over a range
            guard !d.isEmpty else { return d }
            let a = rng.below(d.count), n = 1 + rng.below(min(64, d.count - a))
            for i in a..<(a + n) { d[i] = UInt8(rng.below(256)) }
        }
        return d
    }

    // MARK: text

    mutating func text(_ input: [UInt8]) -> [UInt8] {
        switch rng.below(6) {
        case 0, 1, 2: return replaceNumber(input)
        case 3: return replaceString(input)
        default: return lineOperation(input)
        }
    }

    /// Replaces one number (a run of digits with sign, point and exponent) with a hostile one.
    mutating func replaceNumber(_ d: [UInt8]) -> [UInt8] {
        var spans: [Range<Int>] = []
        var i = 0
        while i < d.count {
            if Self.isDigit(d[i]) || (d[i] == UInt8(ascii: "-") && i + 1 < d.count && Self.isDigit(d[i + 1])) {
                let start = i
                i += 1
                while i < d.count, Self.isDigit(d[i]) || [UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E"),
                                                            UInt8(ascii: "+"), UInt8(ascii: "-")].contains(d[i]) { i += 1 }
                spans.append(start..<i)
            } else {
                i += 1
            }
        }
        guard !spans.isEmpty else { return binary(d) }
        var out = d
        let span = rng.pick(spans)
        out.replaceSubrange(span, with: Array(rng.pick(Self.hostileNumbers).utf8))
        return out
    }

    /// Replaces the contents of one quoted string.
    mutating func replaceString(_ d: [UInt8]) -> [UInt8] {
        let quotes = d.indices.filter { d[$0] == UInt8(ascii: "\"") }
        guard quotes.count >= 2 else { return binary(d) }
        let k = rng.below(quotes.count - 1)
        var out = d
        out.replaceSubrange((quotes[k] + 1)..<quotes[k + 1], with: Array(rng.pick(Self.hostileStrings).utf8))
        return out
    }

    /// Deletes, duplicates or swaps lines (JSON entries, tiktoken ranks, trace events).
    mutating func lineOperation(_ d: [UInt8]) -> [UInt8] {
        var lines = d.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).map(Array.init)
        guard lines.count > 1 else { return binary(d) }
        let a = rng.below(lines.count), b = rng.below(lines.count)
        switch rng.below(3) {
        case 0: lines.remove(at: a)
        case 1: lines.insert(lines[a], at: b)
        default: lines.swapAt(a, b)
        }
        return Array(lines.joined(separator: [UInt8(ascii: "\n")]))
    }

    // MARK: safetensors

    /// Mutates the JSON header as text and rewrites the 8-byte length to match, so the mutation reaches the
    /// entry checks instead of stopping at the length check.
    mutating func safetensorsHeader(_ d: [UInt8]) -> [UInt8] {
        guard d.count >= 8 else { return binary(d) }
        var length = 0
        for i in 0..<8 { length |= Int(d[i]) << (8 * i) }
        guard length > 0, length <= d.count - 8 else { return binary(d) }
        let header = Array(d[8..<(8 + length)])
        let mutated = text(header)
        var out: [UInt8] = []
        let n = UInt64(mutated.count)
        for i in 0..<8 { out.append(UInt8(truncatingIfNeeded: n >> (8 * UInt64(i)))) }
        out += mutated
        out += d[(8 + length)...]
        return out
    }

    static func isDigit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }
}
