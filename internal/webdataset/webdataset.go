// Package webdataset reads images packed in tar archives in the WebDataset
// layout: each sample is a run of consecutive archive members that share a
// key (the member name up to the first '.' of its base name), such as
// "n01/000123.png" with its label "n01/000123.cls".
//
// Reading one object per image from object storage costs more than a small
// model's inference, so pools are packed in .tar shards instead. This package
// is the format layer only: it names an archive member as an image key
// ([Member.Key], [ParseKey]), lists a tar's samples with the byte range of
// each image ([Walk]), and serves many members from few large range reads
// ([Reader]). It knows nothing of storage: callers pass the tar stream and
// a [ReadRange] function.
package webdataset

import (
	"strconv"
	"strings"
)

// Member is a byte range of an archive: one image.
type Member struct {
	Archive string // the .tar's key or URL, as the caller names it (may be "s3://b/p/0.tar?region=x")
	Name    string // the member's path inside the archive, a '#' in it written %23
	Offset  int64  // of its data in the archive
	Size    int64
}

// Key names the member as an image key:
// Archive + "#" + Name + "@" + Offset + "+" + Size,
// e.g. "pool/00000.tar#n01/000123.png@1536+812".
//
// The range is part of the key so that a member can be read without listing
// its archive again; the name is kept so that the key stays readable.
func (m Member) Key() string {
	var b strings.Builder
	b.Grow(len(m.Archive) + len(m.Name) + 24)
	b.WriteString(m.Archive)
	b.WriteByte('#')
	b.WriteString(m.Name)
	b.WriteByte('@')
	b.WriteString(strconv.FormatInt(m.Offset, 10))
	b.WriteByte('+')
	b.WriteString(strconv.FormatInt(m.Size, 10))
	return b.String()
}

// ParseKey parses a key made by [Member.Key]. ok is false for any other key:
// it requires the suffix "@<digits>+<digits>", a '#' before it (split at the
// last '#'), a non-empty name without '#', and an archive whose path (the
// part before any '?') ends in ".tar".
//
// Names may contain '@' and '+', since the range is taken from the last '@'.
// The numbers must be written as Key writes them (no sign, no leading zeros),
// so that a key ParseKey accepts is the Key of the member it returns, and
// plain object keys that merely look alike are not taken for members.
func ParseKey(key string) (m Member, ok bool) {
	at := strings.LastIndexByte(key, '@')
	if at < 0 {
		return Member{}, false
	}
	offset, size, ok := strings.Cut(key[at+1:], "+")
	if !ok {
		return Member{}, false
	}
	off, ok1 := parseCount(offset)
	sz, ok2 := parseCount(size)
	if !ok1 || !ok2 || off > (1<<63-1)-sz {
		return Member{}, false
	}
	head := key[:at]
	hash := strings.LastIndexByte(head, '#')
	if hash < 0 {
		return Member{}, false
	}
	archive, name := head[:hash], head[hash+1:]
	if name == "" {
		return Member{}, false
	}
	p := archive
	if q := strings.IndexByte(p, '?'); q >= 0 && strings.Contains(p, "://") {
		p = p[:q] // a URL's query; in a key of the workers' bucket, '?' is a character
	}
	if !strings.HasSuffix(p, ".tar") {
		return Member{}, false
	}
	return Member{Archive: archive, Name: name, Offset: off, Size: sz}, true
}

// parseCount parses a non-negative decimal number in canonical form.
func parseCount(s string) (int64, bool) {
	if s == "" || len(s) > 1 && s[0] == '0' {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}
