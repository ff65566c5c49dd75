// Starts Swagger UI on /docs (app/api/docs.py). A file of its own rather than an inline
// <script>, so that the page's content security policy allows scripts from 'self' only.
// The same options as FastAPI's own docs page, without the OAuth2 redirect (no OAuth here)
// and without the online validator (it would call validator.swagger.io).
(() => {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
})();
