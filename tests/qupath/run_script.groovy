/**
 * Run a qupath_scripts/ script on one image, the way QuPath's script runner would, and print what it left.
 *
 *   java -cp "<groovy>/lib/*:<qupath>/lib/app/*" groovy.ui.GroovyMain run_script.groovy IMAGE SCRIPT[,SCRIPT...] REPEAT [ARGS...]
 *
 * QuPath's own QP class cannot load here (its static set-up needs OpenCV, which ../shared/qupath lacks), so the
 * few QP methods the scripts call are bound to the same QuPath core calls QP makes: the image server, the
 * hierarchy's objects, removeObjects, and PathIO.readObjects for importObjectsFromFile. Before the scripts,
 * the image holds an old "Mitotic figure" detection and a lab's "Tumor" annotation; the scripts run in turn,
 * REPEAT times.
 */
import qupath.lib.images.ImageData
import qupath.lib.images.servers.ImageServerProvider
import qupath.lib.io.PathIO
import qupath.lib.objects.PathObjects
import qupath.lib.objects.classes.PathClass
import qupath.lib.roi.ROIs
import qupath.lib.regions.ImagePlane
import java.awt.image.BufferedImage

def image = new File(args[0])
def scripts = args[1].split(',').collect { new File(it) }
int repeat = args[2] as int
def scriptArgs = args.length > 3 ? args[3..-1] as String[] : new String[0]
def server = ImageServerProvider.buildServer(image.toURI().toString(), BufferedImage)
def imageData = new ImageData(server)
def hierarchy = imageData.getHierarchy()
def plane = ImagePlane.getDefaultPlane()
hierarchy.addObject(PathObjects.createDetectionObject(ROIs.createEllipseROI(5, 5, 10, 10, plane),
        PathClass.fromString('Mitotic figure')))
hierarchy.addObject(PathObjects.createAnnotationObject(ROIs.createRectangleROI(0, 0, 64, 64, plane),
        PathClass.fromString('Tumor')))

def binding = new Binding()
binding.setVariable('args', scriptArgs)
binding.setVariable('getCurrentServer', { -> server })
binding.setVariable('getProjectEntry', { -> null })
binding.setVariable('getDetectionObjects', { -> hierarchy.getDetectionObjects() })
binding.setVariable('getAnnotationObjects', { -> hierarchy.getAnnotationObjects() })
binding.setVariable('getAllObjects', { -> hierarchy.getFlattenedObjectList(null).findAll { !it.isRootObject() } })
binding.setVariable('getCurrentHierarchy', { -> hierarchy })
binding.setVariable('removeObjects', { objs, boolean keepChildren -> hierarchy.removeObjects(objs, keepChildren) })
binding.setVariable('importObjectsFromFile', { String path -> hierarchy.addObjects(PathIO.readObjects(new File(path))) })
repeat.times { scripts.each { new GroovyShell(this.class.classLoader, binding).evaluate(it) } }

def objs = hierarchy.getFlattenedObjectList(null).findAll { !it.isRootObject() }
def kind = { it.isTile() ? 'tile:' : it.isDetection() ? 'detection:' : 'annotation:' }
def counts = objs.collect { kind(it) + (it.getPathClass()?.toString() ?: 'none') }.countBy { it }
def root = hierarchy.getRootObject().getMeasurementList()
def measurements = root.getNames().collectEntries { [(it): root.get(it)] }
println 'SCRIPT-RESULT ' + groovy.json.JsonOutput.toJson([objects: counts, root: measurements])
