{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "greenserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "greenserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "greenserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "greenserve.labels" -}}
helm.sh/chart: {{ include "greenserve.chart" . }}
{{ include "greenserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: greenserve
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of the operator. */}}
{{- define "greenserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "greenserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "greenserve.operatorSelectorLabels" -}}
{{ include "greenserve.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "greenserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "greenserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "greenserve.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Bin-packing scheduler names and labels. */}}
{{- define "greenserve.scheduler.fullname" -}}
{{- printf "%s-scheduler" (include "greenserve.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "greenserve.scheduler.selectorLabels" -}}
{{ include "greenserve.selectorLabels" . }}
app.kubernetes.io/component: scheduler
{{- end }}

{{/* kube-scheduler image tag: the value, else the cluster's version without a vendor suffix (v1.30.4-eks-x -> v1.30.4). */}}
{{- define "greenserve.scheduler.image" -}}
{{- $tag := .Values.scheduler.binpack.image.tag }}
{{- if not $tag }}
{{- $tag = regexReplaceAll "[-+].*$" .Capabilities.KubeVersion.Version "" }}
{{- end }}
{{- printf "%s:%s" .Values.scheduler.binpack.image.repository $tag }}
{{- end }}

{{/* Hardened container securityContext shared by the operator and the scheduler. */}}
{{- define "greenserve.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "greenserve.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Namespaced rules of the operator: a ClusterRole rule set (cluster-wide) or a Role in each watched namespace. */}}
{{- define "greenserve.namespacedRules" -}}
# Every verb below is one the operator sends; it writes with PATCH only (server-side apply, merge patches)
# and never deletes (owned objects go with their ModelService through the garbage collector).
# ModelServices: kopf watches them and patches its progress annotations (and removes the finalizer
# older versions added).
- apiGroups: ["greenserve.io"]
  resources: ["modelservices"]
  verbs: ["get", "list", "watch", "patch"]
# The operator writes status (conditions, replicas, energy) through the status subresource.
- apiGroups: ["greenserve.io"]
  resources: ["modelservices/status"]
  verbs: ["get", "patch"]
# Serving Deployments, Services, ConfigMaps (TF Serving batching) and PodDisruptionBudgets are server-side
# applied (an apply that creates an object needs `create` as well as `patch`); Deployments are watched for
# rollout progress. The admission policy limits these writes to objects greenserve manages.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Scale to zero: the EndpointSlice that routes a Service to the activator while its ModelService has no
# ready replica (its own, labelled endpointslice.kubernetes.io/managed-by=endpointslice.greenserve.io), and
# reads of the EndpointSlice controller's slices of the same Service (make-before-break switches).
# A model also moves into or out of a shared pool only once its new home is a ready endpoint of its
# Service in these slices.
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Serving pods: read for readiness and metrics scraping; patched with pod-deletion-cost and the node
# autoscalers' do-not-disrupt / safe-to-evict annotations, and with the shared pools' per-model routing
# labels model.greenserve.io/<ModelService> (the admission policy: annotations and those labels only).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch"]
# Events on ModelServices (greenserve's own core/v1 Events and kopf's handler events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* The scale-to-zero activator: names and labels. */}}
{{- define "greenserve.activator.fullname" -}}
{{- printf "%s-activator" (include "greenserve.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "greenserve.activator.selectorLabels" -}}
{{ include "greenserve.selectorLabels" . }}
app.kubernetes.io/component: activator
{{- end }}
