"""HTML pages (Jinja2 + HTMX): routes, the data they show, and server-rendered SVG charts."""
