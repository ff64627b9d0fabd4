"""Texts for the rendering tests: Markdown as models write it, and attacks.

Each attack, if it ever ran, would add one to `window.__xss` (set to 0 by the
test's init script) or open an alert, which the page fixture records.
"""

CODE = 'def greet(name):\n    return f"Hello, {name}" if name else None'

MARKDOWN = f"""# A heading

A paragraph with **bold**, *emphasis*, `inline code` and [a link](https://example.com/docs).

- one
- two
  - nested

1. first
2. second

| name | value |
| :--- | ---: |
| alpha | 1 |
| beta | 2 |

```python
{CODE}
```

See https://example.org/auto for more.
"""

# Raw HTML, event handlers, SVG, and links whose scheme is javascript: or
# data: however spelled. "jav&#x09;ascript:" is "jav<tab>ascript:", which a
# browser reads as javascript: (it drops tabs inside URLs).
HTML_IN_CODE = "<script>window.__xss++</script> &lt;b&gt; &amp;amp; <b>bold?</b>"
XSS_LINES = [
    "<script>window.__xss++</script>",
    "<img src=x onerror=window.__xss++>",
    "<img src=x onerror=alert('img')>",
    '<svg onload="window.__xss++"><script>window.__xss++</script></svg>',
    '<a href="javascript:window.__xss++">raw link</a>',
    '<iframe src="javascript:window.__xss++"></iframe>',
    "[plain](javascript:window.__xss++)",
    "[upper](JaVaScRiPt:window.__xss++)",
    "[entity](jav&#x09;ascript:window.__xss++)",
    "[entity2](&#106;avascript:window.__xss++)",
    "[angle](<jav\tascript:window.__xss++>)",
    "[spaced]( javascript:window.__xss++ )",
    "[data](data:text/html;base64,PHNjcmlwdD53aW5kb3cuX194c3MrKzwvc2NyaXB0Pg==)",
    "[data-image](data:image/png;base64,iVBORw0KGgo=)",
    "[vbscript](vbscript:msgbox(1))",
    "![image](javascript:window.__xss++)",
    '![quote](x" onerror="window.__xss++)',
    "<javascript:window.__xss++>",
    '[titled](https://example.com/ok "t\\" onmouseover=\\"window.__xss++")',
    "`<img src=x onerror=window.__xss++>`",
    "",
    "```html",
    HTML_IN_CODE,
    "```",
]
XSS = "\n".join(XSS_LINES)
