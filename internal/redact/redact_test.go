package redact

import (
	"strings"
	"testing"
)

// A worker's arguments, and a driver's error quoting a URL, lose the
// queries that may hold a token; what is not a URL stays as it is.
func TestText(t *testing.T) {
	got := strings.Fields(Text("-storage s3://pool?endpoint=http://x&token=SECRET -address a?b"))
	if strings.Contains(strings.Join(got, " "), "SECRET") || got[1] != "s3://pool" || got[3] != "a?b" {
		t.Errorf("Text: %q", got)
	}
	msg := Text(`open bucket "file:///d?create_dir=1&token=SECRET": invalid query parameter "token"`)
	if want := `open bucket "file:///d": invalid query parameter "token"`; msg != want {
		t.Errorf("Text = %q, want %q", msg, want)
	}
	if got := Text("AZBLOB://c?sig=SECRET"); got != "AZBLOB://c" { // as store.Open takes it
		t.Errorf("Text of an upper-case scheme = %q", got)
	}
	if u := URL("azblob://c?sig=SECRET"); u != "azblob://c" {
		t.Errorf("URL = %q", u)
	}
}
