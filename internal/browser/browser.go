// Package browser renders HTML pages in headless Chromium, for tests of
// the pass report: it checks that a page loads without script or console
// errors and that every image decodes, and takes screenshots.
//
// Chromium is the Debian package `chromium` (scripts/setup.sh installs it);
// the DCD_CHROMIUM environment variable names another binary.
//
// # Errors
//
// Check and Screenshot fail when Chromium is missing (ErrNoChromium), when
// it fails or times out, and (Check) when the page's result cannot be read.
// Problems with the page itself are reported in Result, not as errors.
package browser

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// ErrNoChromium is returned by Check and Screenshot when no Chromium binary
// is found.
var ErrNoChromium = errors.New("browser: chromium not found (install the Debian package chromium, or run scripts/setup.sh; DCD_CHROMIUM names another binary)")

// Binary finds Chromium.
func Binary() (string, error) {
	if p := os.Getenv("DCD_CHROMIUM"); p != "" {
		return p, nil
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", ErrNoChromium
}

// Result is what the page showed.
type Result struct {
	// Images counts <img> elements; Broken lists the alt text of those
	// that did not load or decode.
	Images int      `json:"images"`
	Broken []string `json:"broken"`
	// Errors are script errors, failed loads, CSP violations and
	// console.error calls.
	Errors []string `json:"errors"`
	// Title is document.title; Text the page's visible text.
	Title string `json:"title"`
	Text  string `json:"text"`
	// SVGShapes counts rect, line and path elements inside <svg>.
	SVGShapes int `json:"svg_shapes"`
	// External lists src and href attributes that point off the page
	// (anything but data:, #fragments and relative links).
	External []string `json:"external"`
}

const probeHead = `<script>window.__dcdErrors=[];
addEventListener('error',e=>__dcdErrors.push(e.message?String(e.message):'failed to load '+((e.target&&(e.target.src||e.target.href))||'?')),true);
addEventListener('securitypolicyviolation',e=>__dcdErrors.push('CSP violation: '+e.violatedDirective+' '+e.blockedURI));
addEventListener('unhandledrejection',e=>__dcdErrors.push('unhandled rejection: '+e.reason));
(function(){const f=console.error;console.error=function(){__dcdErrors.push(Array.from(arguments).join(' '));return f.apply(console,arguments)}})();
</script>`

const probeTail = `<script>addEventListener('load',()=>{const imgs=[...document.images];
const ext=[...document.querySelectorAll('[src],[href]')].map(e=>e.getAttribute('src')||e.getAttribute('href')).filter(u=>!/^(data:|#|$)/.test(u)&&/^[a-z][a-z0-9+.-]*:/i.test(u));
document.body.setAttribute('data-dcd-probe',JSON.stringify({images:imgs.length,broken:imgs.filter(i=>!i.complete||i.naturalWidth===0).map(i=>i.alt||i.src.slice(0,40)),
errors:__dcdErrors,title:document.title,text:document.body.innerText,svg_shapes:document.querySelectorAll('svg rect, svg line, svg path').length,external:ext}));});</script>`

var probeAttr = regexp.MustCompile(`data-dcd-probe="([^"]*)"`)

// Check loads page (a whole HTML document) in headless Chromium and reports
// what it showed. The page is loaded from a file, with probe scripts added
// (and script-src 'unsafe-inline' added to a Content-Security-Policy meta,
// whose other directives stay in force).
func Check(ctx context.Context, page []byte) (Result, error) {
	var res Result
	dir, err := os.MkdirTemp("", "dcd-browser-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	s := string(page)
	s = strings.Replace(s, "default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';", 1)
	if i := strings.Index(s, "<head>"); i >= 0 {
		s = s[:i+len("<head>")] + probeHead + s[i+len("<head>"):]
	} else {
		s = probeHead + s
	}
	if i := strings.LastIndex(s, "</body>"); i >= 0 {
		s = s[:i] + probeTail + s[i:]
	} else {
		s += probeTail
	}
	file := filepath.Join(dir, "page.html")
	if err := os.WriteFile(file, []byte(s), 0o644); err != nil {
		return res, err
	}
	out, err := run(ctx, dir, "--virtual-time-budget=10000", "--dump-dom", "file://"+file)
	if err != nil {
		return res, err
	}
	m := probeAttr.FindSubmatch(out)
	if m == nil {
		return res, fmt.Errorf("browser: the page's probe did not run (no data-dcd-probe in the DOM Chromium dumped, %d bytes)", len(out))
	}
	if err := json.Unmarshal([]byte(html.UnescapeString(string(m[1]))), &res); err != nil {
		return res, fmt.Errorf("browser: probe result: %w", err)
	}
	return res, nil
}

// Screenshot renders page at the given window size into a PNG file.
func Screenshot(ctx context.Context, page []byte, png string, width, height int) error {
	dir, err := os.MkdirTemp("", "dcd-browser-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, "page.html")
	if err := os.WriteFile(file, page, 0o644); err != nil {
		return err
	}
	abs, err := filepath.Abs(png)
	if err != nil {
		return err
	}
	_, err = run(ctx, dir, "--hide-scrollbars", fmt.Sprintf("--window-size=%d,%d", width, height), "--screenshot="+abs, "file://"+file)
	return err
}

// run starts headless Chromium with a fresh profile in dir and returns its
// stdout.
func run(ctx context.Context, dir string, args ...string) ([]byte, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	base := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--no-first-run", "--no-default-browser-check", "--mute-audio",
		"--user-data-dir=" + filepath.Join(dir, "profile"),
	}
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		tail := stderr.String()
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return nil, fmt.Errorf("browser: %s: %w\n%s", bin, err, tail)
	}
	return stdout.Bytes(), nil
}
