"""The web console: a small page app served at ``/`` by the server itself.

:mod:`.routes` serves the pages and static files and signs browsers in and out;
:mod:`.sessions` keeps the one-time sign-in codes and the sessions. The page's script
(``static/app.js``) calls the ``/v1`` API with the session cookie; nothing is fetched
from any other host (the pages carry a ``default-src 'self'`` Content-Security-Policy).
"""
