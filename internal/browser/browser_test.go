package browser

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const dot = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="

func chromium(t *testing.T) {
	t.Helper()
	if _, err := Binary(); errors.Is(err, ErrNoChromium) {
		t.Fatal(err)
	}
}

// A page with a good image, a broken one, a script error, an external
// link and an image its CSP blocks: Check reports each.
func TestCheckFindsProblems(t *testing.T) {
	chromium(t)
	page := `<!doctype html><html><head><meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'"><title>t</title></head><body>
<p>hello</p><img alt="good" src="` + dot + `"><img alt="broken" src="data:image/png;base64,AAAA">
<img alt="blocked" src="https://example.invalid/x.png"><a href="https://example.invalid/">out</a>
<svg width="10" height="10"><rect width="5" height="5"/></svg><script>nope()</script></body></html>`
	res, err := Check(context.Background(), []byte(page))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.Images != 3 || !slices.Contains(res.Broken, "broken") || !slices.Contains(res.Broken, "blocked") || slices.Contains(res.Broken, "good") {
		t.Errorf("images %d, broken %q: want 3 with broken and blocked broken", res.Images, res.Broken)
	}
	joined := strings.Join(res.Errors, "\n")
	if !strings.Contains(joined, "nope") || !strings.Contains(joined, "CSP") {
		t.Errorf("errors %q: want the script error and the CSP violation", res.Errors)
	}
	if len(res.External) != 2 || res.SVGShapes != 1 || res.Title != "t" || !strings.Contains(res.Text, "hello") {
		t.Errorf("external %q, svg shapes %d, title %q, text %q", res.External, res.SVGShapes, res.Title, res.Text)
	}
}

func TestCheckCleanPageAndScreenshot(t *testing.T) {
	chromium(t)
	page := `<!doctype html><html><head><title>ok</title></head><body><img alt="a" src="` + dot + `"></body></html>`
	res, err := Check(context.Background(), []byte(page))
	if err != nil {
		t.Fatal(err)
	}
	if res.Images != 1 || len(res.Broken) != 0 || len(res.Errors) != 0 || len(res.External) != 0 {
		t.Errorf("clean page: %+v", res)
	}
	png := filepath.Join(t.TempDir(), "shot.png")
	if err := Screenshot(context.Background(), []byte(page), png, 400, 300); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(png); err != nil || fi.Size() == 0 {
		t.Errorf("no screenshot: %v", err)
	}
}
