/// Kimi K2's pre-tokenizer: the regex of tokenization_kimi.py, hand-compiled so that class intersection
/// (`&&`, which most regex engines lack) and backtracking behave exactly as tiktoken's fancy-regex does.
///
/// The alternatives, tried in order at each position (leftmost-first):
/// 1. `[\p{Han}]+`
/// 2. `[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?`
/// 3. `[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?`
/// 4. `\p{N}{1,3}`
/// 5. ` ?[^\s\p{L}\p{N}]+[\r\n]*`
/// 6. `\s*[\r\n]+`
/// 7. `\s+(?!\S)`
/// 8. `\s+`
public enum KimiPreTokenizer {
    /// Character classes of one Unicode scalar, computed once per scalar.
    struct Classes {
        var han = false, letter = false, number = false, space = false, newline = false
        var upperish = false  // [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]
        var lowerish = false  // [\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]

        init(_ s: Unicode.Scalar) {
            let v = s.value
            newline = v == 0x0A || v == 0x0D
            space = s.properties.isWhitespace
            han = HanScript.contains(v)
            var mark = false
            switch s.properties.generalCategory {
            case .uppercaseLetter, .titlecaseLetter:
                letter = true
                upperish = !han
            case .lowercaseLetter:
                letter = true
                lowerish = !han
            case .modifierLetter, .otherLetter:
                letter = true
                upperish = !han
                lowerish = !han
            case .nonspacingMark, .spacingMark, .enclosingMark:
                mark = true
            case .decimalNumber, .letterNumber, .otherNumber:
                number = true
            default:
                break
            }
            if mark {
                upperish = !han
                lowerish = !han
            }
        }

        /// `[^\r\n\p{L}\p{N}]`
        var prefix: Bool { !newline && !letter && !number }
        /// `[^\s\p{L}\p{N}]`
        var symbol: Bool { !space && !letter && !number }
    }

    /// Splits `text` into pieces (ranges of its Unicode scalars), exactly as tiktoken would with Kimi's pattern.
    public static func split(_ text: String) -> [Substring] {
        let scalars = Array(text.unicodeScalars)
        let classes = scalars.map(Classes.init)
        var pieces: [Substring] = []
        var starts: [String.UnicodeScalarView.Index] = []
        starts.reserveCapacity(scalars.count + 1)
        var i = text.unicodeScalars.startIndex
        while i != text.unicodeScalars.endIndex { starts.append(i); i = text.unicodeScalars.index(after: i) }
        starts.append(text.unicodeScalars.endIndex)
        var p = 0
        while p < scalars.count {
            let end = match(at: p, scalars, classes)
            pieces.append(Substring(text.unicodeScalars[starts[p]..<starts[end]]))
            p = end
        }
        return pieces
    }

    /// End (exclusive) of the match at `p`; every position matches some alternative.
    static func match(at p: Int, _ s: [Unicode.Scalar], _ c: [Classes]) -> Int {
        let n = s.count
        // 1. [\p{Han}]+
        if c[p].han {
            var e = p
            while e < n && c[e].han { e += 1 }
            return e
        }
        // 2 and 3 share the optional prefix; try with it (greedy), then without.
        for start in (c[p].prefix ? [p + 1, p] : [p]) where start <= n {
            if let e = upperThenLower(start, s, c) { return e }
        }
        for start in (c[p].prefix ? [p + 1, p] : [p]) where start <= n {
            if let e = upperRunThenLower(start, s, c) { return e }
        }
        // 4. \p{N}{1,3}
        if c[p].number {
            var e = p
            while e < n && e < p + 3 && c[e].number { e += 1 }
            return e
        }
        // 5.  ?[^\s\p{L}\p{N}]+[\r\n]*
        do {
            let q = s[p] == " " ? p + 1 : p
            for start in (q != p ? [q, p] : [p]) where start < n && c[start].symbol {
                var e = start
                while e < n && c[e].symbol { e += 1 }
                while e < n && c[e].newline { e += 1 }
                return e
            }
        }
        // 6. \s*[\r\n]+ : whitespace up to and including the last newline of the whitespace run.
        var run = p
        while run < n && c[run].space { run += 1 }
        if run > p {
            var last = -1
            for k in p..<run where c[k].newline { last = k }
            if last >= 0 { return last + 1 }
            // 7. \s+(?!\S): the run, less its last character when a non-space follows.
            if run == n { return run }
            if run - p >= 2 { return run - 1 }
            // 8. \s+
            return run
        }
        return p + 1  // unreachable for valid input: every scalar is covered above
    }

    /// `[A]*[B]+(?i:'s|…)?` from `start` (A: upper-ish, B: lower-ish), with backtracking over the A run.
    static func upperThenLower(_ start: Int, _ s: [Unicode.Scalar], _ c: [Classes]) -> Int? {
        let n = s.count
        var aEnd = start
        while aEnd < n && c[aEnd].upperish { aEnd += 1 }
        var k = aEnd
        while k >= start {
            if k < n && c[k].lowerish {
                var e = k
                while e < n && c[e].lowerish { e += 1 }
                return contraction(e, s)
            }
            k -= 1
        }
        return nil
    }

    /// `[A]+[B]*(?i:'s|…)?` from `start`.
    static func upperRunThenLower(_ start: Int, _ s: [Unicode.Scalar], _ c: [Classes]) -> Int? {
        let n = s.count
        guard start < n && c[start].upperish else { return nil }
        var e = start
        while e < n && c[e].upperish { e += 1 }
        while e < n && c[e].lowerish { e += 1 }
        return contraction(e, s)
    }

    /// Extends past an optional `'s|'t|'re|'ve|'m|'ll|'d` (any case) at `e`.
    static func contraction(_ e: Int, _ s: [Unicode.Scalar]) -> Int {
        guard e < s.count, s[e] == "'" else { return e }
        func lower(_ i: Int) -> Unicode.Scalar? {
            guard i < s.count else { return nil }
            let v = s[i].value
            return (0x41...0x5A).contains(v) ? Unicode.Scalar(v + 32) : s[i]
        }
        let a = lower(e + 1), b = lower(e + 2)
        if b == "e" && (a == "r" || a == "v") { return e + 3 }
        if a == "l" && b == "l" { return e + 3 }
        if a == "s" || a == "t" || a == "m" || a == "d" { return e + 2 }
        return e
    }
}
