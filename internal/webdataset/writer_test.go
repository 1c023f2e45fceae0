package webdataset

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// What a Writer writes, Walk reads back: the same samples, in order, with
// each image's bytes at the range its member names.
func TestWriterRoundTrip(t *testing.T) {
	type sample struct{ key, ext, image, label, domain string }
	var in []sample
	for i := range 50 {
		s := sample{fmt.Sprintf("shard/%06d", i), []string{"png", "jpg", "webp"}[i%3], blob(int64(i), 100+37*i), fmt.Sprint(i % 7), ""}
		if i%4 == 0 {
			s.domain = "night"
		}
		in = append(in, s)
	}
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, s := range in {
		if err := w.Write(s.key, s.ext, []byte(s.image), s.label, s.domain); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := walkAll(buf.Bytes(), "a.tar")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(in) {
		t.Fatalf("Walk found %d samples, want %d", len(got), len(in))
	}
	data := buf.Bytes()
	for i, s := range in {
		g := got[i]
		if g.Key != s.key || g.Label != s.label || g.Domain != s.domain || g.Image.Name != s.key+"."+s.ext {
			t.Errorf("sample %d: got key %q label %q domain %q image %q; want %q %q %q %q",
				i, g.Key, g.Label, g.Domain, g.Image.Name, s.key, s.label, s.domain, s.key+"."+s.ext)
		}
		if image := string(data[g.Image.Offset : g.Image.Offset+g.Image.Size]); image != s.image {
			t.Errorf("sample %d: its range holds %d bytes other than the image written", i, len(image))
		}
	}
	// The same samples make the same bytes.
	var again bytes.Buffer
	w = NewWriter(&again)
	for _, s := range in {
		w.Write(s.key, s.ext, []byte(s.image), s.label, s.domain)
	}
	w.Close()
	if !bytes.Equal(again.Bytes(), data) {
		t.Error("writing the same samples again gave other bytes")
	}
}

// Samples that Walk would read back otherwise, or not at all, are refused
// with an error naming the sample and what was expected.
func TestWriterRejects(t *testing.T) {
	for _, tc := range []struct{ key, ext, label, domain, want string }{
		{"a.b", "png", "1", "", "without '.'"},
		{"", "png", "1", "", "without '.'"},
		{"x/", "png", "1", "", "without '.'"},
		{"ok", "tif", "1", "", `extension "tif"`},
		{"ok", "png", "", "", "non-empty label"},
		{"ok", "png", " 1", "", "non-empty label"},
		{"ok", "png", "1", "day\n", "white space"},
		{"ok", "png", strings.Repeat("x", MaxText+1), "", "over"},
		{"d#1/a", "png", "1", "", "'#'"},
		{strings.Repeat("k", maxName), "png", "1", "", "a walk takes"},
	} {
		w := NewWriter(new(bytes.Buffer))
		err := w.Write(tc.key, tc.ext, []byte("img"), tc.label, tc.domain)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Write(%q, %q, label %q, domain %q) = %v; want an error with %q", tc.key, tc.ext, tc.label, tc.domain, err, tc.want)
		}
	}
	w := NewWriter(new(bytes.Buffer))
	if err := w.Write("k", "png", nil, "1", ""); err != nil {
		t.Fatal(err)
	}
	if err := w.Write("k", "png", nil, "1", ""); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("a key written twice: %v", err)
	}
}
